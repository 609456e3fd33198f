"""Offline use of the three IAA workflows with vLLM's `LLM`, one request each.

    .venv/bin/iaa-vllm init checkpoints/tiny --preset tiny     # once
    .venv/bin/python examples/offline_workflows.py [--model checkpoints/tiny] [--image photo.jpg]
"""

import argparse
import os

from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/tiny", help="IAA checkpoint directory")
    parser.add_argument("--image", help="image for mm/grounding (default: a plain test image)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # CPU build: KV cache size in GiB

    from vllm import LLM, SamplingParams

    from iaa_vllm import grounding
    from iaa_vllm.tokenizer import build_prompt

    image = Image.open(args.image).convert("RGB") if args.image else Image.new("RGB", (400, 300), "teal")
    llm = LLM(model=args.model, max_model_len=2048, gpu_memory_utilization=0.3)
    requests = {
        "text": {"prompt": build_prompt("Name three colours.", with_image=False)},
        "mm": {"prompt": build_prompt("What is in this image?", with_image=True),
               "multi_modal_data": {"image": image}},
        "grounding": {"prompt": build_prompt(grounding.question("the whole picture"), with_image=True),
                      "multi_modal_data": {"image": image}},
    }
    params = [SamplingParams(max_tokens=24, temperature=0, extra_args={"iaa_workflow": wf}) for wf in requests]
    for (workflow, _), output in zip(requests.items(), llm.generate(list(requests.values()), params)):
        answer = output.outputs[0].text
        print(f"[{workflow}] {answer!r}")
        if workflow == "grounding":
            print(f"  pixel boxes: {grounding.pixel_boxes(answer, image.width, image.height)}")


if __name__ == "__main__":
    main()
