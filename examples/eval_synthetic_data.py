"""Write small synthetic MME and RefCOCO datasets (known answers) to try `iaa-vllm eval` on.

    .venv/bin/python examples/eval_synthetic_data.py data/synthetic [--broken]

Writes `MME/` (official layout), `llava/` (LLaVA-style .jsonl + images), and
`refer/refcoco/` + `refer/train2014/` (refer format + COCO-style images).
"""

import argparse
import os

from iaa_vllm.eval import synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write the datasets into")
    parser.add_argument("--images", type=int, default=4, help="images per MME category / RefCOCO images")
    parser.add_argument("--broken", action="store_true", help="add a corrupt and a missing image to each")
    args = parser.parse_args()
    questions = synthetic.write_mme_official(os.path.join(args.out, "MME"), args.images, args.broken)
    jsonl, images = synthetic.write_mme_jsonl(os.path.join(args.out, "llava"), args.images)
    refer, coco = synthetic.write_refer(os.path.join(args.out, "refer"), args.images, args.broken)
    print(f"MME, official layout: {os.path.join(args.out, 'MME')} ({questions} questions)")
    print(f"MME, LLaVA layout:    {jsonl} + {images}")
    print(f"RefCOCO, refer:       {refer} + {coco}")


if __name__ == "__main__":
    main()
