"""The three IAA workflows through the OpenAI client, against `iaa-vllm serve`.

    .venv/bin/iaa-vllm serve checkpoints/tiny --port 8000   # in another shell
    .venv/bin/python examples/openai_client.py [--base-url http://127.0.0.1:8000/v1] [--image photo.jpg]

The workflow goes in `extra_body={"vllm_xargs": {"iaa_workflow": ...}}`; the image
as a base64 data URL (an http(s) URL works too, see docs/serving.md, media options).
"""

import argparse

from openai import OpenAI
from PIL import Image

from iaa_vllm import grounding


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the server's /v1 URL")
    parser.add_argument("--image", help="image for mm/grounding (default: a plain test image)")
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args(argv)

    from iaa_vllm.client import data_url

    api = OpenAI(base_url=args.base_url, api_key="EMPTY")  # vLLM checks keys only with --api-key
    model = api.models.list().data[0].id
    image = Image.open(args.image) if args.image else Image.new("RGB", (400, 300), "teal")
    picture = {"type": "image_url", "image_url": {"url": data_url(args.image or image)}}
    questions = {
        "text": "Name three colours.",
        "mm": [picture, {"type": "text", "text": "What is in this image?"}],
        "grounding": [picture, {"type": "text", "text": grounding.question("the whole picture")}],
    }
    answers = {}
    for workflow, content in questions.items():
        response = api.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}],
            max_tokens=args.max_tokens, temperature=0,
            extra_body={"vllm_xargs": {"iaa_workflow": workflow}})
        answers[workflow] = response.choices[0].message.content
        print(f"[{workflow}] {answers[workflow]!r}")

    stream = api.chat.completions.create(  # the same mm question, token by token
        model=model, messages=[{"role": "user", "content": questions["mm"]}],
        max_tokens=args.max_tokens, temperature=0, stream=True)
    answers["mm-stream"] = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    print(f"[mm, streamed] {answers['mm-stream']!r}")
    print(f"  pixel boxes: {grounding.pixel_boxes(answers['grounding'], image.width, image.height)}")
    return answers


if __name__ == "__main__":
    main()
