#!/usr/bin/env bash
# Checkpoints on this machine's GPU, per recipe (bf16, 2 micro-batches of 8 x 2048 a step):
#  - exact resume: a 20-step run saving at step 10, and a run resumed from that checkpoint,
#    end with the same bits in every parameter, moment and logged loss (bench/compare_checkpoints.py);
#  - what a save costs: the checkpoint's size and how long it blocks the loop (the host copy;
#    the file is written by a background thread), and tokens/s over 100 steps saving every 50
#    against the same 100 steps saving only at the end.
# JSON in $OUT/checkpoint.json.
#   OUT=dir [RECIPES="recipes/a.yaml ..."] bench/checkpoint.sh DATA_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/out}
data=${1:?usage: bench/checkpoint.sh DATA_DIR}
bin=${SSMTRAIN:-build/ssmtrain}
mkdir -p "$OUT"
runs="$OUT/checkpoint-runs"
rm -rf "$runs"
recipes=${RECIPES:-recipes/mamba2-130m.yaml recipes/jamba-small.yaml}
results=()
for recipe in $recipes; do
  name=$(basename "$recipe" .yaml)
  common=(--set data.train="$data" --set run.output_dir="$runs" --set training.micro_batch=8
          --set training.global_batch_tokens=32768 --set training.token_budget=0 --set schedule.warmup_steps=2
          --set training.eval_every=0 --set logging.every=10 --set checkpoint.keep=5)
  "$bin" train "$recipe" "${common[@]}" --set run.name="$name-full" --set training.max_steps=20 \
    --set checkpoint.every=10 > "$OUT/ckpt-$name-full.log" 2>&1
  "$bin" train "$recipe" "${common[@]}" --set run.name="$name-resumed" --set training.max_steps=20 \
    --set checkpoint.every=10 --resume "$runs/$name-full/checkpoints/step_00000010.h5" > "$OUT/ckpt-$name-resumed.log" 2>&1
  "$bin" train "$recipe" "${common[@]}" --set run.name="$name-save50" --set training.max_steps=100 \
    --set checkpoint.every=50 > "$OUT/ckpt-$name-save50.log" 2>&1
  "$bin" train "$recipe" "${common[@]}" --set run.name="$name-nosave" --set training.max_steps=100 \
    --set checkpoint.every=0 > "$OUT/ckpt-$name-nosave.log" 2>&1
  tail -3 "$OUT/ckpt-$name-resumed.log"
  results+=("$(python3 bench/compare_checkpoints.py "$name" "$runs/$name-full" "$runs/$name-resumed" \
                 "$runs/$name-save50" "$runs/$name-nosave")")
done
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
printf '{"format": "ssmtrain-bench-checkpoint", "version": 1, "device": "%s", "results": [%s]}\n' \
  "$gpu" "$(IFS=,; echo "${results[*]}")" > "$OUT/checkpoint.json"
python3 -m json.tool "$OUT/checkpoint.json"
