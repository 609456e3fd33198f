#!/usr/bin/env bash
# Set up .venv (fast when done), then run the test suite.
# Arguments replace the default target (`tests`), e.g. `bash scripts/test.sh tests/test_model.py -x`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then set -- tests; fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
