#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: .venv, torch==2.14.1 + torchvision==0.29.1 (from the local
# disk here), dropens[dev] (editable), and the Debian package dataset-fashion-mnist.
# Re-running is cheap: pip runs again only when pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.dropens-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch 2.14.1 from this disk is a CUDA build: ~6 GB in .venv with its nvidia-* wheels. Say so before
  # pip fails half-way with "No space left on device".
  free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
  if ! .venv/bin/pip show torch >/dev/null 2>&1 && [ "$free_gb" -lt 7 ]; then
    echo "[setup] error: disk: ${free_gb} GB free in $(pwd), need >= 7 GB for torch + torchvision (a CUDA build: ~6 GB in .venv)" >&2
    exit 1
  fi
  echo "[setup] installing torch, torchvision and dropens[dev] into .venv (first time: a few minutes)"
  export PIP_NO_CACHE_DIR=1  # nothing to reuse: torch comes from this disk; keep the cache off it
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian package dataset-fashion-mnist"
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1) ||
      (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)
  else
    echo "[setup] note: Fashion-MNIST is missing; get it with 'sudo apt-get install dataset-fashion-mnist'" \
         "(or train with data.download=true where the internet is reachable)"
  fi
fi
