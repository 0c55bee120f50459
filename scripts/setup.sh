#!/usr/bin/env bash
# Create .venv and install mlmlab with its dev extra. When torch is missing, take the CPU build
# torch==2.13.0 (an unpinned torch would pull a multi-GB CUDA build). GPU users: install the torch
# build you need into .venv first, then run this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
