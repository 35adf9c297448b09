"""siglip search: the exact top k of an index for a text (or an image), by cosine.

    siglip search photos.index "a dog on a beach"
    siglip search photos.index --image query.jpg -k 20 --json
    siglip search photos.index "a red car" --html cars.html      # a page of thumbnails

Prints rank, probability sigmoid(t * cos + b), cosine and path. The query is embedded with the
index's model (the path in its meta.json, or --model): weights whose fingerprint differs from the
index's are refused. The index is read in chunks, never whole, so it may be larger than memory.
--json prints a list of {"rank", "path", "score", "logit", "cosine"} (score: the probability).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from siglip.cli.common import add_model_arguments, load_model, print_json
from siglip.index.search import topk_file
from siglip.index.store import check_model, read_items, read_meta


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", help="an index folder written by siglip embed")
    p.add_argument("query", nargs="?", default="", help="the text to search for")
    p.add_argument("--image", default="", help="search with this image instead of a text")
    p.add_argument("-k", type=int, default=10, help="how many results")
    add_model_arguments(p, required=False)
    p.add_argument("--json", action="store_true", help="print the results as a JSON list")
    p.add_argument("--html", default="", help="write a page of the results with thumbnails here")


def item_label(item: dict) -> str:
    """What a row is, for people: the image path, `shard::key`, or the text."""
    if "path" in item:
        return item["path"]
    if "shard" in item:
        return f"{item['shard']}::{item['key']}"
    return item.get("text", item.get("id", ""))


def run(args: argparse.Namespace) -> int:
    if bool(args.query) == bool(args.image):
        raise ValueError('give a text query ("a dog on a beach") or --image FILE, not both')
    index = Path(args.index)
    meta = read_meta(index)
    if meta is None:
        raise FileNotFoundError(f"{index}: no meta.json; not an index written by siglip embed")
    model_path = args.model or meta["model"]
    if not args.model and not Path(model_path).exists():
        raise FileNotFoundError(f"{index}: its model {model_path!r} is gone; pass the same weights with --model")
    model = load_model(args, model_path, "cpu" if args.device == "auto" else args.device)
    check_model(meta, model.fingerprint, index, f"--model {model_path}")
    q = model.embed_images([args.image]) if args.image else model.embed_texts([args.query])  # (1, d)
    start = time.perf_counter()
    with tqdm(total=meta["count"], unit="row", desc="search", disable=meta["count"] < 1 << 22, leave=False) as bar:
        cos, rows = topk_file(index / meta["embeddings"], q, args.k, progress=bar.update)
    took = time.perf_counter() - start
    logits = model.from_cosine(cos[0])  # (k,) t * cos + b
    items = read_items(index, meta, rows[0].tolist())
    results = [
        {"rank": r + 1, "path": item_label(it), "score": float(torch.sigmoid(z)), "logit": float(z), "cosine": float(c)}
        | ({"caption": it["caption"]} if "caption" in it else {})
        for r, (it, z, c) in enumerate(zip(items, logits, cos[0]))
    ]
    if args.html:
        from siglip.cli.html import write_results_page

        write_results_page(args.html, args.query or args.image, results, items)
    if args.json:
        print_json(results)
        return 0
    for r in results:
        print(f"{r['rank']:>4}  {r['score']:.4f}  {r['cosine']:+.4f}  {r['path']}")
    print(f"({meta['count']} rows searched exactly in {took:.2f} s" + (f"; page: {args.html})" if args.html else ")"))
    return 0
