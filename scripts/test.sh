#!/usr/bin/env bash
# Set up (scripts/setup.sh), check the import rules, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
lint-imports
exec python -m pytest -q -p no:cacheprovider "$@"
