#!/usr/bin/env bash
# Installs the system packages ssmtrain builds and tests with (Debian 12, Ubuntu 24.04).
# Idempotent: when every package is already present it returns without touching apt.
# The CUDA toolkit (nvcc, cuBLAS, cuDNN, NCCL) is optional and is not installed here:
# CMake's SSMTRAIN_CUDA=AUTO turns the CUDA build on when nvcc is found.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libyaml-cpp-dev libhdf5-dev hdf5-tools
  libsentencepiece-dev sentencepiece
  zlib1g-dev linux-doc
  libopenblas-dev
  libopenmpi-dev openmpi-bin
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev libfmt-dev nlohmann-json3-dev
  python3
  librsvg2-bin                 # rsvg-convert: renders the SVG reports to PNG for a look
)

# NCCL (the nccl backend: multi-GPU training) comes with NVIDIA's CUDA repository; where that
# repository is configured, SSMTRAIN_WITH_NCCL=1 installs it too.
if [ "${SSMTRAIN_WITH_NCCL:-0}" = 1 ]; then
  packages+=(libnccl2 libnccl-dev)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  else
    echo "install-deps: need root or sudo to install: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
