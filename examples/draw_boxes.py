"""Ask a served IAA model where something is, draw the boxes on the image, save a PNG.

    .venv/bin/iaa-vllm serve checkpoints/tiny --port 8000   # in another shell
    .venv/bin/python examples/draw_boxes.py --image photo.jpg --expression "the dog" --out boxes.png

The `tiny` checkpoint has random weights: it rarely answers with a box, so its PNG
is usually the image unchanged. The boxes are in the image's own pixels
(`iaa_vllm.client.ground` undoes the model's padded-square normalisation).
"""

import argparse

from openai import OpenAI
from PIL import Image, ImageDraw


def draw(image: Image.Image, boxes, colour: str = "red", width: int = 3) -> Image.Image:
    """A copy of `image` (as RGB) with each pixel box `(x1, y1, x2, y2)` outlined."""
    canvas = image.convert("RGB")
    pen = ImageDraw.Draw(canvas)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        pen.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        pen.text((x1 + width + 1, y1 + width + 1), str(i + 1), fill=colour)
    return canvas


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the server's /v1 URL")
    parser.add_argument("--image", help="image file (default: a test image with a red square)")
    parser.add_argument("--expression", default="the red square", help="what to find")
    parser.add_argument("--out", default="boxes.png", help="where to write the PNG")
    args = parser.parse_args(argv)

    from iaa_vllm import client

    if args.image:
        image = Image.open(args.image)
    else:
        image = Image.new("RGB", (480, 320), "white")
        ImageDraw.Draw(image).rectangle([300, 60, 420, 180], fill="red")
    api = OpenAI(base_url=args.base_url, api_key="EMPTY")
    result = client.ground(api, args.image or image, args.expression)
    draw(image, result.boxes).save(args.out, format="PNG")
    print(f"answer: {result.answer!r}")
    print(f"pixel boxes on the {result.size[0]}x{result.size[1]} image: {result.boxes}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
