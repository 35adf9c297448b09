"""siglip search: the top k of an index for a text (or an image), by cosine.

    siglip search photos.index "a dog on a beach"
    siglip search photos.index --image query.jpg -k 20 --json
    siglip search photos.index "a red car" --html cars.html      # a page of thumbnails

Prints rank, probability sigmoid(t * cos + b), cosine and path. The query is embedded with the
index's model (the path in its meta.json, or --model): weights whose fingerprint differs from the
index's are refused. With an approximate index (built by `siglip index`), its candidates are
re-ranked with the exact rows, so the cosines printed are exact; --exact scans every row instead (in
chunks, never the whole index in memory). A stale or damaged approximate index is not used (a warning).
--json prints a list of {"rank", "path", "score", "logit", "cosine"} (score: the probability).
INDEX may be a clip-retrieval folder (img_emb/, metadata/; or its text_emb/): it is imported once into
INDEX/siglip-img_emb.index/ (see siglip.index.clip_import), and --model is needed: the folder names none.
"""

from __future__ import annotations

import argparse
import time

import torch

from siglip.cli.common import add_model_arguments, load_model, print_json
from siglip.index.clip_import import check_query_model, is_imported, resolve
from siglip.index.handle import Index
from siglip.interop.hub import model_ref_exists


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", help="an index folder written by siglip embed, or a clip-retrieval folder")
    p.add_argument("query", nargs="?", default="", help="the text to search for")
    p.add_argument("--image", default="", help="search with this image instead of a text")
    p.add_argument("-k", type=int, default=10, help="how many results")
    add_model_arguments(p, required=False)
    p.add_argument("--json", action="store_true", help="print the results as a JSON list")
    p.add_argument("--html", default="", help="write a page of the results with thumbnails here")
    p.add_argument("--exact", action="store_true", help="scan every row, even where an approximate index exists")


def item_label(item: dict) -> str:
    """What a row is, for people: the image path, `shard::key`, or the text."""
    if "path" in item:
        return item["path"]
    if "shard" in item:
        return f"{item['shard']}::{item['key']}"
    return item.get("text", item.get("id", ""))


def _recall10(desc: dict) -> str:
    r = desc.get("recall", {}).get("rows", {}).get("recall@10")
    return "not measured" if r is None else f"{r:.3f} measured"


def run(args: argparse.Namespace) -> int:
    if bool(args.query) == bool(args.image):
        raise ValueError('give a text query ("a dog on a beach") or --image FILE, not both')
    index = resolve(args.index)  # a clip-retrieval folder: its imported index beside it
    idx = Index(index, follow=False)  # one generation for the search and its items
    meta = idx.meta
    if is_imported(meta) and not args.model:
        raise ValueError(f"{args.index}: a clip-retrieval folder names no model; give --model (dim {meta['dim']})")
    model_path = args.model or meta["model"]
    if not args.model and not model_ref_exists(model_path):
        raise FileNotFoundError(f"{index}: its model {model_path!r} is gone; pass the same weights with --model")
    model = load_model(args, model_path, "cpu" if args.device == "auto" else args.device)
    check_query_model(meta, model.fingerprint, model.dim, index, f"--model {model_path}")
    q = model.embed_images([args.image]) if args.image else model.embed_texts([args.query])  # (1, d)
    start = time.perf_counter()
    approx = None if args.exact else idx.ann
    cos, rows = idx.search(q, args.k, exact=args.exact)
    cos, rows = torch.from_numpy(cos), torch.from_numpy(rows)
    took = time.perf_counter() - start
    logits = model.from_cosine(cos[0])  # (k,) t * cos + b
    items = idx.current().items(rows[0].tolist())  # from the open files, whatever a writer did since
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
    how = (
        "exactly"
        if approx is None
        else f"with the {approx['kind']} index (recall@10 {_recall10(approx)}, exact cosines)"
    )
    print(f"({meta['count']} rows searched {how} in {took:.3f} s" + (f"; page: {args.html})" if args.html else ")"))
    return 0
