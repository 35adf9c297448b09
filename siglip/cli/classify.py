"""siglip classify: zero-shot labels for images, each label's probability on its own.

    siglip classify photos/ --model siglip_b16.pt --labels "cat,dog,car"
    siglip classify photos/ --model m.pt --labels-file labels.txt --template "a photo of a {}." --csv out.csv
    siglip classify cat.jpg dog.jpg --model m.pt --labels "cat,dog" --json

SRC: image files, a folder (recursive), a manifest or shards. Per image: the probability
sigmoid(t * cos + b) of every label (independent per label, as SigLIP is trained: they need not sum
to 1) and the top label. A label's text embedding is the renormalised mean over the templates
(--template, repeatable; default "a photo of a {}."), as zero-shot evaluation builds it.
Unreadable images are skipped and listed on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from siglip.api import DEFAULT_TEMPLATES
from siglip.cli.common import add_model_arguments, load_model, print_json, read_list, write_csv
from siglip.data import IMAGE_EXTENSIONS
from siglip.index.build import embed_image_items
from siglip.index.sources import Item, list_items

log = logging.getLogger("siglip.classify")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", nargs="+", help="image files, or one folder / manifest / shard pattern")
    add_model_arguments(p)
    p.add_argument("--labels", default="", help='comma-separated labels: "cat,dog,car"')
    p.add_argument("--labels-file", default="", help="labels, one a line")
    p.add_argument("--template", action="append", default=[], help="prompt with {} for the label (repeatable)")
    p.add_argument("--templates-file", default="", help="templates, one a line")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print a JSON list of {path, top, score, probs}")
    p.add_argument("--csv", default="", help="write path, top label, then one column per label here")


def image_items(src: list[str]) -> list[Item]:
    if len(src) == 1 and Path(src[0]).suffix.lower() not in IMAGE_EXTENSIONS:
        return list_items(src[0])
    return [Item(os.path.abspath(s), {"path": os.path.abspath(s)}, os.path.abspath(s)) for s in src]


def run(args: argparse.Namespace) -> int:
    labels = read_list(args.labels, args.labels_file, "labels")
    templates = list(args.template)  # as given: a template may hold a comma
    if args.templates_file:
        templates += read_list("", args.templates_file, "templates")
    templates = templates or list(DEFAULT_TEMPLATES)
    model = load_model(args)
    classes = model.label_embeddings(labels, templates)  # (c, d)
    items = image_items(args.src)
    zimg, ok, skipped = embed_image_items(model, items, args.batch_size, args.workers)
    probs = torch.sigmoid(model.logits(zimg, classes))  # (n_ok, c)
    for s in skipped:
        log.warning("skipped %s: %s", s["key"], s["reason"])
    rows = []
    for i, p in zip(ok, probs):
        top = int(p.argmax())
        rows.append({"path": items[i].record.get("path", items[i].key), "top": labels[top], "score": float(p[top]),
                     "probs": {label: float(x) for label, x in zip(labels, p)}})  # fmt: skip
    if args.csv:
        write_csv(args.csv, ["path", "top", *labels], [[r["path"], r["top"], *r["probs"].values()] for r in rows])
    if args.json:
        print_json(rows)
    elif not args.csv:
        for r in rows:
            print(f"{r['top']:<20} {r['score']:.4f}  {r['path']}")
    if skipped or args.csv:
        print(f"{len(rows)} images classified, {len(skipped)} skipped" + (f"; wrote {args.csv}" if args.csv else ""),
              file=sys.stderr)  # fmt: skip
    return 0
