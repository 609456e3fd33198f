#!/usr/bin/env bash
# Set up the environment (fast when done), then run the tests.
#
#   bash scripts/test.sh [pytest args]               # vLLM 0.32 (.venv): default target `tests`
#   bash scripts/test.sh --vllm 0.26 [pytest args]   # vLLM 0.26 (.venv-vllm0.26): default
#                                                    #   target the engine subset below
# Arguments replace the default target, e.g. `bash scripts/test.sh tests/test_model.py -x`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The second supported vLLM (iaa_vllm/engine/compat.py) runs what can differ by
# version: the test files of the modules that touch the vLLM interfaces compat.py
# lists, the model's core checks once (text bits against stock Llama, the image
# workflows against the reference, compiled, in test_model.py), and the GPU
# command's CPU smoke (0.26 is the vLLM the GPU host runs).
# Left out, as they do not depend on vLLM's version: eager mode (test_model_eager.py;
# eager is compiled mode's fallback, not another interface), tensor parallel 2,
# the pure-torch reference, tokenizer, weight names and CLIP defaults; serving, Ray,
# eval and the other benchmarks (not in the 0.26 env: no Ray); the kernel tests.
VLLM026_TESTS=(
    tests/test_model.py --deselect tests/test_model.py::test_tensor_parallel_2_equals_1
    tests/test_admission.py tests/test_routing.py tests/test_config_hook.py
    tests/test_registration.py tests/test_processing.py tests/test_config.py
    tests/test_runner_v1.py tests/test_runner_v2.py tests/test_compat.py
    tests/test_benchmarks_gpu.py tests/test_projector.py tests/test_insertion.py
    tests/test_custom_ops.py tests/test_media.py tests/test_patches.py
    tests/test_engine_death.py::test_engine_death_watch_tells_a_death_from_a_requested_stop
)
# The GPU command's CPU smoke (four engine starts) runs once in CI, on 0.26 above;
# on 0.32 its fast tests run. Give a target to run it there too.
NOT_ON_032=(-m "not gpu_smoke")

VLLM=0.32
if [[ "${1:-}" == "--vllm" ]]; then VLLM="${2:-}"; shift 2; fi
case "$VLLM" in
    0.32) VENV=.venv; DEFAULT=(tests "${NOT_ON_032[@]}") ;;
    0.26) VENV=.venv-vllm0.26; DEFAULT=("${VLLM026_TESTS[@]}") ;;
    *) echo "test: unsupported --vllm '$VLLM' (valid: 0.32, 0.26)" >&2; exit 2 ;;
esac

bash scripts/setup.sh --vllm "$VLLM"
if [ $# -eq 0 ]; then set -- "${DEFAULT[@]}"; fi
# The 25 slowest tests and fixtures close the report (docs/development.md, CI).
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=25 "$@"
