"""Installing iaa-vllm changes nothing for other models' engines.

vLLM loads the plugin's `vllm.general_plugins` entry point into every engine; it
must only register IAA. A stock Llama engine in this environment must get no IAA
logits processor and answer exactly as with plugins turned off (`VLLM_PLUGINS=""`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests import engines
from tests.engines import QUESTIONS, per_step_logprobs, text_request

PROMPTS = [text_request(q)["prompt"] for q in QUESTIONS] + ["Once upon a time"]


def _logits_processor_names(worker) -> list[str]:
    return sorted(type(p).__name__ for p in worker.model_runner.input_batch.logitsprocs.all)


def test_a_stock_engine_gets_no_iaa_logits_processor(stock_engine, iaa_engine):
    (stock,) = stock_engine.collective_rpc(_logits_processor_names)
    (iaa,) = iaa_engine.collective_rpc(_logits_processor_names)
    assert "WorkflowSlots" in iaa  # the check can see it where it belongs
    assert "WorkflowSlots" not in stock and sorted(set(iaa) - {"WorkflowSlots"}) == stock


def test_a_stock_engine_answers_as_with_plugins_off(stock_engine, stock_dir, tmp_path):
    out = tmp_path / "plugins_off.json"
    script = textwrap.dedent(f"""
        import json
        from tests import engines
        if __name__ == "__main__":
            llm = engines.start_engine({stock_dir!r})
            outputs = engines.generate_together(llm, {PROMPTS!r}, engines.greedy(max_tokens=12, logprobs=5))
            json.dump([[list(o.outputs[0].token_ids),
                        [{{str(t): lp for t, lp in step.items()}} for step in engines.per_step_logprobs(o)]]
                       for o in outputs], open({str(out)!r}, "w"))
            engines.stop_engine(llm)
    """)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "plugins_off.py").write_text(script)
    # No compile cache, as the plugins-on `stock_engine`: the plugins-off engine
    # compiles for itself, like for like.
    with engines.cold_compile_cache():
        env = {**os.environ, "VLLM_PLUGINS": "", "PYTHONPATH": repo}
        subprocess.run([sys.executable, str(tmp_path / "plugins_off.py")], env=env, cwd=repo, check=True,
                       timeout=900)
    plugins_off = json.loads(out.read_text())
    plugins_on = engines.generate_together(stock_engine, PROMPTS, engines.greedy(max_tokens=12, logprobs=5))
    for on, (ids, logprobs) in zip(plugins_on, plugins_off):
        assert list(on.outputs[0].token_ids) == ids
        assert [{str(t): lp for t, lp in step.items()} for step in per_step_logprobs(on)] == logprobs
