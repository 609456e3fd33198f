#!/usr/bin/env bash
# Fresh machine to a running demo: set up .venv (fast when done), then `iaa-vllm demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/iaa-vllm demo "$@"
