"""siglip score: the probability that an image and a text belong together, sigmoid(t * cos + b).

    siglip score --model siglip_b16.pt --image dog.jpg --text "a dog on a beach"
    siglip score --model m.pt --image a.jpg --text "a cat" --image b.jpg --text "a car" --json
    siglip score --model m.pt --pairs pairs.csv --csv scores.csv     # a manifest: image + caption columns

Each pair is scored on its own (the paper's point: no softmax over other texts). --image and --text
are given in pairs, in order; or --pairs takes a .csv/.tsv/.jsonl manifest. Unreadable images are
skipped and listed on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from siglip.cli.common import add_model_arguments, load_model, print_json, write_csv
from siglip.index.build import embed_image_items
from siglip.index.sources import Item, manifest_items

log = logging.getLogger("siglip.score")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--image", action="append", default=[], help="an image file (repeatable, paired with --text)")
    p.add_argument("--text", action="append", default=[], help="a text (repeatable, paired with --image)")
    p.add_argument("--pairs", default="", help="manifest of pairs (.csv/.tsv/.jsonl with image and caption columns)")
    p.add_argument("--image-column", default="")
    p.add_argument("--caption-column", default="")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print a JSON list of {image, text, score, logit}")
    p.add_argument("--csv", default="", help="write image, text, score, logit rows here")


def pairs_of(args: argparse.Namespace) -> tuple[list[Item], list[str]]:
    if args.pairs:
        items = manifest_items(Path(args.pairs), args.image_column, args.caption_column)
        missing = [it.record["line"] for it in items if "caption" not in it.record]
        if missing:
            raise ValueError(
                f"{args.pairs}: no caption column found (or empty at line {missing[0]}); name it with --caption-column"
            )
        return items, [it.record["caption"] for it in items]
    if not args.image or len(args.image) != len(args.text):
        raise ValueError(
            f"give --image and --text in pairs (got {len(args.image)} images, {len(args.text)} texts) or --pairs FILE"
        )
    items = [Item(f"{i}:{p}", {"path": p}, p) for i, p in enumerate(args.image)]
    return items, list(args.text)


def run(args: argparse.Namespace) -> int:
    items, texts = pairs_of(args)
    model = load_model(args)
    ztxt = model.embed_texts(texts, args.batch_size)  # (n, d)
    zimg, ok, skipped = embed_image_items(model, items, args.batch_size, args.workers, progress=len(items) > 64)
    logits = model.from_cosine((zimg * ztxt[ok]).sum(-1))  # (n_ok,) t * cos + b, one pair each
    rows = [
        {"image": items[i].record["path"], "text": texts[i], "score": float(torch.sigmoid(z)), "logit": float(z)}
        for i, z in zip(ok, logits)
    ]
    for s in skipped:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    if args.csv:
        write_csv(args.csv, ["image", "text", "score", "logit"], [list(r.values()) for r in rows])
    if args.json:
        print_json(rows)
    elif not args.csv:
        for r in rows:
            print(f"{r['score']:.4f}  {r['logit']:+8.3f}  {r['image']}  {r['text']}")
    if skipped:
        print(f"{len(skipped)} of {len(items)} images could not be read", file=sys.stderr)
    return 0
