#!/usr/bin/env bash
# Builds ssmtrain with CUDA for Hopper on a GPU machine, runs the gpu-labelled tests and the
# benchmarks, and leaves logs and JSON in $OUT (default: build-gpu/out). Used on the lent
# H100/H200 machines, where the dependencies are already installed:
#   scripts/gpu-check.sh [ctest args...]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build-gpu/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0

start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv \
  > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DSSMTRAIN_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu -j "$(nproc)" > "$OUT/build.log" 2>&1 || { grep -E "error|Error" -A5 "$OUT/build.log" | head -80; exit 1; }
echo "build: $(( $(date +%s) - start )) s"

ctest --test-dir build-gpu -L gpu --output-on-failure -j 4 --timeout 600 "$@" > "$OUT/ctest-gpu.log" 2>&1
status=$?
grep -E "tests passed|tests failed|Failed|\*\*\*|Skipped" "$OUT/ctest-gpu.log" | tail -40

for bench in build-gpu/bench/ssmtrain_bench_*; do
  [ -x "$bench" ] || continue
  name=$(basename "$bench" | sed 's/^ssmtrain_//')
  "$bench" --out "$OUT/$name.json" > "$OUT/$name.txt" 2>&1 || status=1
  tail -25 "$OUT/$name.txt"
done
echo "total: $(( $(date +%s) - start )) s"
exit $status
