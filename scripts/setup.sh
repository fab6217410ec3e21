#!/usr/bin/env bash
# Create .venv and install grvl-sdk with every extra and the dev tools.
# torch is pinned to the 2.13.0 CPU build first (see docs/getting-started.md for CUDA machines):
# installing anything that depends on torch before it would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==${GRVL_TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[all,dev]"
