# Sourced by scripts/test.sh and scripts/quickstart.sh: run named phases, time each, and print
# the times on every exit (a failing phase still shows where the time went). The caller sets
# phase_tag (the prefix of every line, e.g. "test.sh") before sourcing.
timings=()

# Runs "$@" as the named phase and records how long it took.
phase() {
  local name="$1"
  shift
  echo "== ${phase_tag}: ${name}"
  local start="${SECONDS}"
  "$@"
  local elapsed=$((SECONDS - start))
  timings+=("$(printf '%-12s %5ds' "${name}" "${elapsed}")")
  echo "== ${phase_tag}: ${name} done in ${elapsed}s"
}

report_phases() {
  local status=$?
  echo "== ${phase_tag}: elapsed per phase"
  local line
  for line in "${timings[@]}"; do
    echo "   ${line}"
  done
  if [ "${status}" -ne 0 ]; then
    echo "== ${phase_tag}: FAILED (exit ${status})" >&2
  fi
}
trap report_phases EXIT
