#!/usr/bin/env bash
# Trains each full-size recipe (recipes/*.yaml) for a few steps on this machine's GPU in bf16 at
# its sequence length (2048) and reports tokens/s, MFU and peak memory, the medians over the
# steps after the first two (warm-up), as JSON in $OUT/recipes.json. The step keeps each
# recipe's micro-batch; the global batch is cut to 4 micro-batches so a step takes seconds.
#   OUT=dir [STEPS=8] [RECIPE_TIMEOUT=900] [RECIPES="a.yaml b.yaml"] bench/recipes.sh [DATA_DIR]
#   (DATA_DIR defaults to corpus/linux-doc, from `ssmtrain data prepare`)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/out}
data=${1:-corpus/linux-doc}
mkdir -p "$OUT"
steps=${STEPS:-8}
results=()
recipes=${RECIPES:-recipes/mamba1-130m.yaml recipes/mamba2-130m.yaml recipes/hybrid-mamba2-130m.yaml recipes/jamba-small.yaml}
for recipe in $recipes; do
  name=$(basename "$recipe" .yaml)
  micro=$(sed -n 's/^ *micro_batch: *\([0-9]*\).*/\1/p' "$recipe")
  seq=$(sed -n 's/^ *seq_len: *\([0-9]*\).*/\1/p' "$recipe")
  log="$OUT/train-$name.log"
  timeout "${RECIPE_TIMEOUT:-900}" build/ssmtrain train "$recipe" --resume none --set data.train="$data" --set run.output_dir="$OUT/runs" \
    --set training.global_batch_tokens=$((4 * micro * seq)) --set training.max_steps="$steps" \
    --set training.token_budget=0 --set schedule.warmup_steps=1 --set training.eval_every=0 \
    --set eval.perplexity_tokens=$((micro * seq)) --set logging.every=1 > "$log" 2>&1
  status=$?
  tail -4 "$log"
  results+=("$(python3 - "$OUT/runs/$name/metrics.jsonl" "$name" "$status" "$micro" "$seq" <<'PY'
import json, statistics, sys
path, name, status, micro, seq = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rows = []
try:
    rows = [json.loads(l) for l in open(path) if '"tokens_per_s"' in l]
except OSError:
    pass
steady = rows[2:] or rows
med = lambda k: statistics.median(r[k] for r in steady) if steady else None
print(json.dumps({"recipe": name, "exit_status": status, "micro_batch": micro, "seq_len": seq,
                  "steps_timed": len(steady), "tokens_per_s": med("tokens_per_s"), "mfu": med("mfu"),
                  "ms_per_step": med("ms"), "peak_mem_gib": max((r["mem_gib"] for r in rows), default=None),
                  "loss_first": rows[0]["loss"] if rows else None, "loss_last": rows[-1]["loss"] if rows else None}))
PY
)")
done
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
printf '{"format": "ssmtrain-bench-recipes", "version": 1, "device": "%s", "results": [%s]}\n' \
  "$gpu" "$(IFS=,; echo "${results[*]}")" > "$OUT/recipes.json"
python3 -m json.tool "$OUT/recipes.json"
