"""`iaa-vllm demo`: one engine, the three IAA workflows in one batch.

Starts a vLLM engine on an IAA checkpoint (by default a random-weight tiny one,
written on first use, so its answers are gibberish) and sends a text question, a
multimodal question and a grounding request together in one `generate` call.
"""

from __future__ import annotations

import argparse
import os
import time

from PIL import Image, ImageDraw

from iaa_vllm import EXTRA_ARGS_KEY, grounding
from iaa_vllm.tokenizer import build_prompt

DEFAULT_MODEL = os.path.join("checkpoints", "tiny")
# (workflow, question, with image)
REQUESTS = [
    ("text", "What is the capital of France?", False),
    ("mm", "What shapes are in this image?", True),
    ("grounding", grounding.question("the red circle"), True),
]


def example_image(width: int = 480, height: int = 320) -> Image.Image:
    """A few coloured shapes on a non-square canvas (exercises the square padding)."""
    image = Image.new("RGB", (width, height), (245, 245, 235))
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 60, 160, 180), fill=(220, 30, 30))  # the red circle
    draw.rectangle((220, 40, 330, 150), fill=(30, 80, 220))
    draw.polygon([(300, 290), (440, 290), (370, 180)], fill=(40, 170, 60))
    draw.line((20, 300, 200, 230), fill=(240, 200, 0), width=8)
    return image


def ensure_checkpoint(model: str) -> None:
    """Write the tiny random checkpoint at the default path if it is missing."""
    if os.path.isfile(os.path.join(model, "config.json")):
        return
    if os.path.normpath(model) != os.path.normpath(DEFAULT_MODEL):
        raise ValueError(f"no checkpoint at {model!r} (config.json missing); "
                         f"write one with `iaa-vllm init {model} --preset tiny`")
    from iaa_vllm.checkpoint import write_checkpoint

    print(f"writing the tiny random checkpoint to {model}")
    write_checkpoint(model, preset="tiny", overwrite=True)


def engine_kwargs(args: argparse.Namespace) -> dict:
    """The demo engine's arguments besides the model: vLLM's defaults otherwise."""
    return dict(gpu_memory_utilization=0.3, max_model_len=2048, dtype=args.dtype, seed=0)


def main(args: argparse.Namespace, llm=None) -> int:
    """Run the batch on `llm`, or on an engine of its own (`engine_kwargs`), stopped after."""
    ensure_checkpoint(args.model)
    if args.image:
        image = Image.open(args.image).convert("RGB")
    else:
        image = example_image()
    # Must be set before vLLM reads its environment; 1 GiB is plenty for the tiny model.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    own_engine = llm is None
    start = time.perf_counter()
    if own_engine:
        llm = LLM(model=args.model, **engine_kwargs(args))
    engine_s = time.perf_counter() - start

    prompts, params = [], []
    for workflow, question, with_image in REQUESTS:
        prompt = {"prompt": build_prompt(question, with_image=with_image)}
        if with_image:
            prompt["multi_modal_data"] = {"image": image}
        prompts.append(prompt)
        params.append(SamplingParams(max_tokens=args.max_tokens, temperature=0,
                                     extra_args={EXTRA_ARGS_KEY: workflow}))

    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    batch_s = time.perf_counter() - start
    if own_engine:
        llm.llm_engine.engine_core.shutdown()

    total = 0
    print()
    for (workflow, question, with_image), out in zip(REQUESTS, outputs):
        completion = out.outputs[0]
        total += len(completion.token_ids)
        print(f"[{workflow}] {question}" + (f"  (image {image.width}x{image.height})" if with_image else ""))
        print(f"  -> {completion.text!r}")
        print(f"     {len(completion.token_ids)} tokens, prompt {len(out.prompt_token_ids)} tokens")
        if workflow == "grounding":  # random weights rarely produce a well-formed box
            boxes = grounding.pixel_boxes(completion.text, image.width, image.height)
            print(f"     pixel boxes on the {image.width}x{image.height} image: {boxes}")
    print()
    if own_engine:
        print(f"engine start   {engine_s:6.1f} s")
    print(f"batch latency  {batch_s:6.2f} s  ({len(prompts)} requests, {total} generated tokens)")
    print(f"throughput     {total / batch_s:6.1f} tokens/s")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"IAA checkpoint directory (default: {DEFAULT_MODEL}, "
                             "a random tiny checkpoint written if missing)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens to generate per request")
    parser.add_argument("--image", default=None,
                        help="image file for the mm and grounding requests (default: a drawn example)")
    parser.add_argument("--dtype", default="float32",
                        help="engine dtype (float32 on CPU; bfloat16 on a GPU for the real shapes)")
