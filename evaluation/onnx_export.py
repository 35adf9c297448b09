"""An ONNX export against the model it came from, on a zero-shot dataset: mean cosine of its image and
text rows to the torch model's, zero-shot acc1 of each, and whether text-to-image search gives the
same top 5.

    python evaluation/onnx_export.py --model-path runs/demo/siglip_demo.pt --export runs/demo_onnx \
        --export runs/demo_onnx_int8 --dataset digits --data-path data/digits
    -> one line per export: precision, image/text mean and min cosine, acc1 (torch -> export), top-5 agreement

The class prompts are the dataset's templates (text rows: every prompt, and each class's mean); the
search queries are the class names in the first template, over the dataset's images.
"""

import argparse
import json

import torch

import siglip
from siglip.eval.datasets import ZERO_SHOT_DATASETS, classification_set


def rows(model, data, prompts):
    """(images, prompts, classes) unit rows of one model."""
    z_img = model.embed_images(list(data.images), batch_size=128)
    z_txt = model.embed_texts(prompts)
    return z_img, z_txt, model.label_embeddings(data.classnames, data.templates)


def acc1(z_img, z_cls, labels) -> float:
    return (z_img @ z_cls.T).argmax(1).eq(torch.tensor(labels)).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, help="the torch model the exports came from")
    p.add_argument("--export", action="append", required=True, help="an ONNX export folder (repeat for several)")
    p.add_argument("--dataset", default="digits", choices=ZERO_SHOT_DATASETS)
    p.add_argument("--data-path", default="data/digits")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    data = classification_set(args.dataset, args.data_path)
    if not isinstance(data.images[0], str):
        raise SystemExit(f"{args.dataset}: images as arrays; this check takes image files")
    prompts = [t.format(c) for c in data.classnames for t in data.templates]
    ref = rows(siglip.load(args.model_path), data, prompts)
    queries = [data.templates[0].format(c) for c in data.classnames]
    ref_top5 = (siglip.load(args.model_path).embed_texts(queries) @ ref[0].T).topk(5).indices
    out = []
    for folder in args.export:
        model = siglip.load(folder)
        got = rows(model, data, prompts)
        cos_img, cos_txt = (got[0] * ref[0]).sum(-1), (got[1] * ref[1]).sum(-1)
        top5 = (model.embed_texts(queries) @ got[0].T).topk(5).indices
        out.append(
            {
                "export": folder,
                "precision": model.model.spec["precision"],
                "image_cosine_mean": cos_img.mean().item(),
                "image_cosine_min": cos_img.min().item(),
                "text_cosine_mean": cos_txt.mean().item(),
                "text_cosine_min": cos_txt.min().item(),
                "acc1_torch": acc1(ref[0], ref[2], data.labels),
                "acc1_export": acc1(got[0], got[2], data.labels),
                "top5_same_set": sum(set(a.tolist()) == set(b.tolist()) for a, b in zip(top5, ref_top5)),
                "top5_same_order": sum(torch.equal(a, b) for a, b in zip(top5, ref_top5)),
                "queries": len(queries),
            }
        )
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{len(data.images)} images, {len(prompts)} prompts, {len(queries)} search queries")
    for r in out:
        print(
            f"{r['precision']:5} image cosine mean {r['image_cosine_mean']:.5f} min {r['image_cosine_min']:.5f}  "
            f"text cosine mean {r['text_cosine_mean']:.5f} min {r['text_cosine_min']:.5f}  "
            f"acc1 {100 * r['acc1_torch']:.2f}% -> {100 * r['acc1_export']:.2f}% "
            f"({100 * (r['acc1_export'] - r['acc1_torch']):+.2f} points)  "
            f"top-5 same {r['top5_same_set']}/{r['queries']} (same order {r['top5_same_order']})"
        )


if __name__ == "__main__":
    main()
