"""iaa_vllm/demo.py: its requests, its image, its checkpoint handling and its arguments,
and one real run whose printed answers must be the shared engine's for the same batch.

What the three workflows answer against stock Llama and the reference is
tests/test_model.py's; here the demo must send exactly that batch and print it.
"""

from __future__ import annotations

import ast
import os
import re

import pytest

from iaa_vllm import demo, grounding
from iaa_vllm.cli import build_parser
from iaa_vllm.engine.names import WORKFLOWS
from iaa_vllm.tokenizer import build_prompt
from tests import engines


def test_requests_cover_the_three_workflows_with_images_where_needed():
    assert [wf for wf, _, _ in demo.REQUESTS] == list(WORKFLOWS)
    assert {wf: with_image for wf, _, with_image in demo.REQUESTS} == {"text": False, "mm": True, "grounding": True}
    _, question, _ = demo.REQUESTS[2]
    assert question == grounding.question("the red circle")
    assert question.startswith("Please provide the bounding box coordinate of the region this sentence describes: ")


def test_example_image_is_wide_and_holds_the_red_circle():
    image = demo.example_image()
    assert (image.mode, image.size) == ("RGB", (480, 320))  # not square: the padding matters
    assert image.getpixel((100, 120)) == (220, 30, 30)      # the circle's centre
    assert image.getpixel((5, 5)) == (245, 245, 235)         # the canvas
    assert demo.example_image().tobytes() == image.tobytes()  # drawn, not random


def test_a_missing_checkpoint_is_named_with_the_command_that_writes_it(tmp_path):
    missing = str(tmp_path / "my-iaa")
    with pytest.raises(ValueError) as error:
        demo.ensure_checkpoint(missing)
    assert f"no checkpoint at {missing!r} (config.json missing)" in str(error.value)
    assert f"`iaa-vllm init {missing} --preset tiny`" in str(error.value)
    assert not os.path.exists(missing)  # only the default path is written


def test_an_existing_checkpoint_is_left_alone(tiny_dir):
    before = {f: os.path.getmtime(os.path.join(tiny_dir, f)) for f in os.listdir(tiny_dir)}
    demo.ensure_checkpoint(tiny_dir)
    assert {f: os.path.getmtime(os.path.join(tiny_dir, f)) for f in os.listdir(tiny_dir)} == before


def test_the_default_checkpoint_is_written_on_first_use(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # DEFAULT_MODEL is relative: checkpoints/tiny
    demo.ensure_checkpoint(demo.DEFAULT_MODEL)
    assert os.path.isfile(tmp_path / "checkpoints" / "tiny" / "config.json")
    assert "writing the tiny random checkpoint to checkpoints/tiny" in capsys.readouterr().out
    demo.ensure_checkpoint("./checkpoints/tiny/")  # the same path spelt differently: found


def test_arguments_and_defaults():
    args = build_parser().parse_args(["demo"])
    assert (args.model, args.max_tokens, args.image, args.dtype) == ("checkpoints/tiny", 32, None, "float32")
    args = build_parser().parse_args(["demo", "--model", "m", "--max-tokens", "4", "--image", "x.png"])
    assert (args.model, args.max_tokens, args.image) == ("m", 4, "x.png")


def test_its_engine_has_the_shared_test_engines_settings():
    """So the run below, on the shared engine, is the run the demo makes with its own."""
    assert demo.engine_kwargs(build_parser().parse_args(["demo"])) == engines.ENGINE_DEFAULTS


@pytest.mark.slow
def test_the_demo_prints_what_the_engine_answers_for_its_batch(tiny_dir, iaa_engine, capsys):
    """The demo's batch on the shared engine prints that engine's answers to the same requests."""
    args = build_parser().parse_args(["demo", "--model", tiny_dir, "--max-tokens", "6"])
    assert demo.main(args, llm=iaa_engine) == 0
    printed = capsys.readouterr().out
    answers = [ast.literal_eval(a) for a in re.findall(r"^  -> (.*)$", printed, re.M)]
    prompt_tokens = [int(n) for n in re.findall(r"tokens, prompt (\d+) tokens", printed)]
    image = demo.example_image()
    requests = [{"prompt": build_prompt(q, with_image=i), **({"multi_modal_data": {"image": image}} if i else {})}
                for _, q, i in demo.REQUESTS]
    outputs = iaa_engine.generate(requests, [engines.greedy(wf, max_tokens=6) for wf, _, _ in demo.REQUESTS])
    assert answers == [o.outputs[0].text for o in outputs]
    assert prompt_tokens == [len(o.prompt_token_ids) for o in outputs]
    assert prompt_tokens[0] < 100 < 576 < min(prompt_tokens[1:])  # the image became 576 placeholders
    assert "pixel boxes on the 480x320 image" in printed
