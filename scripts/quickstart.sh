#!/usr/bin/env bash
# The first command on a fresh Debian or Ubuntu machine: installs the dependencies, builds
# build/ssmtrain, prepares the default corpus (the Linux kernel documentation from Debian's
# linux-doc package: a SentencePiece tokenizer and HDF5 token shards), trains the tiny Mamba-2
# recipe (on the GPU when one is visible, else on the CPU in about five minutes on two cores),
# evaluates the validation loss and says where the run directory and its plots are.
#   scripts/quickstart.sh [--set key=value ...]   (overrides go to `ssmtrain train`)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

recipe=recipes/tiny/mamba2.yaml
corpus=corpus/linux-doc

phase_tag=quickstart
# shellcheck source=scripts/lib/phases.sh
source scripts/lib/phases.sh

build() {
  if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="/usr/local/cuda/bin:${PATH}"
  fi
  if command -v ccache >/dev/null 2>&1; then
    export CCACHE_DIR="${CCACHE_DIR:-${HOME}/.cache/ccache}"
    mkdir -p "${CCACHE_DIR}"
  fi
  # The CUDA kernels only when a GPU is there to run them: on a CPU machine they would only
  # cost build time (scripts/test.sh compiles them wherever nvcc is, in its own build-test/, so
  # the two scripts never reconfigure each other's build).
  local cuda=OFF
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    cuda=AUTO
  fi
  echo "CUDA kernels: ${cuda}"
  cmake -S . -B build -G Ninja -DSSMTRAIN_CUDA="${cuda}" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build -j "$(nproc)" --target ssmtrain
}

# The tokenizer and the shards are kept: a second run reuses them.
prepare_corpus() {
  if [ -f "${corpus}/manifest.json" ]; then
    echo "${corpus} is already prepared (delete it to prepare it again)"
    return
  fi
  mkdir -p corpus
  build/ssmtrain data tokenizer --input linux-doc --vocab-size 4096 --out "${corpus}.model"
  build/ssmtrain data prepare --tokenizer "${corpus}.model" --input linux-doc --out "${corpus}"
}

# Each quickstart trains its demo run afresh: a second run replaces runs/tiny-mamba2's run files
# and checkpoints (run.overwrite) rather than stopping at "already holds a run".
train() {
  build/ssmtrain train "${recipe}" --resume none --set run.overwrite=true "$@" | tee build/quickstart-train.log
}

phase install-deps scripts/install-deps.sh
phase build build
phase corpus prepare_corpus
phase train+eval train "$@"

run_dir=$(sed -n 's/^run directory: \([^ ]*\).*/\1/p' build/quickstart-train.log | tail -1)
echo
echo "Done. The run directory ${run_dir}/ holds:"
echo "  loss_curve.svg   training and validation loss (open it in a browser)"
echo "  metrics.jsonl    one line per step: loss, grad norm, lr, ms, tokens/s, MFU, memory"
echo "  config.yaml      the resolved recipe"
grep -E "^loss .* -> " build/quickstart-train.log | tail -1
