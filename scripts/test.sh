#!/usr/bin/env bash
# Set up a virtual environment (CPU torch 2.13.0 when torch is missing) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
lint-imports
exec python -m pytest -q -p no:cacheprovider "$@"
