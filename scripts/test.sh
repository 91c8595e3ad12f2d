#!/usr/bin/env bash
# Installs the dependencies, configures and builds ssmtrain into build-test/ and runs ctest.
# Extra arguments go to ctest, e.g. `scripts/test.sh -L gpu` or `scripts/test.sh -R layering`.
# CUDA is built when nvcc is found (on PATH or in /usr/local/cuda/bin); GPU tests skip without a GPU.
# build-test/ (RelWithDebInfo, CUDA when nvcc is there) is its own directory: scripts/quickstart.sh
# builds build/ (Release, CUDA only with a GPU), so running one after the other rebuilds nothing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

cores="$(nproc)"
build_dir=build-test

phase_tag=test.sh
# shellcheck source=scripts/lib/phases.sh
source scripts/lib/phases.sh

# Runs "$@" with its output in the log file $1, printed only when it fails.
logged() {
  local log="$1"
  shift
  if "$@" >"${log}" 2>&1; then
    echo "   (output in ${log})"
  else
    local status=$?
    cat "${log}" >&2
    return "${status}"
  fi
}

mkdir -p "${build_dir}"
phase install-deps logged "${build_dir}/install-deps.log" scripts/install-deps.sh

export CCACHE_DIR="${CCACHE_DIR:-${HOME}/.cache/ccache}"
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
mkdir -p "${CCACHE_DIR}"

if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:${PATH}"
fi
if command -v nvcc >/dev/null 2>&1; then
  echo "== test.sh: nvcc at $(command -v nvcc): building CUDA"
else
  echo "== test.sh: no nvcc: building CPU only"
fi

phase configure cmake -S . -B "${build_dir}" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSSMTRAIN_CUDA=AUTO
phase build cmake --build "${build_dir}" -j "${cores}"
# ctest runs tests side by side; OpenMP threads that spin while waiting would steal the cores
# from the neighbouring test (the small-op model tests ran 1000x slower that way).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
phase ctest ctest --test-dir "${build_dir}" --output-on-failure -j "${cores}" --timeout 900 "$@"
