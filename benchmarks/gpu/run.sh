#!/usr/bin/env bash
# The prepared GPU command: one call, at most 10 minutes, JSON after every step.
#
#   bash benchmarks/gpu/run.sh OUTDIR [run.py options]              # the GPU host
#   bash benchmarks/gpu/run.sh --cpu-smoke OUTDIR [run.py options]  # CPU, tiny stand-ins (CI)
#
# On the GPU host (no --cpu-smoke): when .gpu/vllm026-*.tar.xz* is in the checkout
# (shared/gpu/make_bundle.sh builds it), it is unpacked into /tmp/v and put on
# PYTHONPATH, and the bundle's .gpu/gpu_check.py joins step 1. Without .gpu/ the
# python's own vLLM is used. The time budget (--budget-s, default 540 s) counts
# from this script's start, unpacking included.
#
# Options of this script (the rest go to benchmarks/gpu/run.py; see its --help):
#   --cpu-smoke   tiny stand-ins on CPU; python defaults to .venv/bin/python
#   --python PY   the interpreter (default: python3 on a GPU host)
# Output: OUTDIR/gpu_run.json (+ .png), OUTDIR/run.log, OUTDIR/engines/*.{json,log}.
# Exit status: run.py's (0: every check that ran passed; 1: one failed), 2 on bad usage.
set -uo pipefail
START=$(date +%s.%N)
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
COMMAND="bash benchmarks/gpu/run.sh $*"

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }
CPU_SMOKE=0; PY=""; ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-smoke) CPU_SMOKE=1; ARGS+=("$1"); shift ;;
        --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
        -h|--help) usage; echo; echo "run.py options:"; ARGS+=("$1"); shift ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
if [ -z "$PY" ]; then
    if [ "$CPU_SMOKE" = 1 ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! command -v "$PY" >/dev/null; then
    echo "run.sh: python '$PY' not found (give one with --python)" >&2; exit 2
fi

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1
NOTE="no bundle: the python's own vLLM"
GPU_CHECK=()
BUNDLE=$(ls .gpu/vllm026-*.tar.xz* 2>/dev/null | sort)
if [ "$CPU_SMOKE" = 0 ] && [ -n "$BUNDLE" ]; then
    # A warm host kept /tmp/v from an earlier call: unpack only a different bundle.
    STAMP=$(ls -l $BUNDLE | awk '{print $5, $NF}')
    if [ "$(cat /tmp/v/.bundle 2>/dev/null)" != "$STAMP" ]; then
        rm -rf /tmp/v && mkdir -p /tmp/v
        T0=$(date +%s)
        if cat $BUNDLE | xz -dc -T0 | tar -x -C /tmp/v; then
            echo "$STAMP" > /tmp/v/.bundle
            NOTE="unpacked $(echo $BUNDLE) into /tmp/v in $(( $(date +%s) - T0 )) s"
        else
            NOTE="unpacking $(echo $BUNDLE) failed"
        fi
    else
        NOTE="bundle already unpacked in /tmp/v ($(echo $BUNDLE))"
    fi
    export PYTHONPATH="$PWD:/tmp/v/site${PYTHONPATH:+:$PYTHONPATH}"
    if [ -f .gpu/gpu_check.py ]; then GPU_CHECK=(--gpu-check .gpu/gpu_check.py); fi
fi
echo "run.sh: $NOTE; python $PY"

exec "$PY" -m benchmarks.gpu.run --started-at "$START" --command "$COMMAND" --setup-note "$NOTE" \
    "${GPU_CHECK[@]}" "${ARGS[@]}"
