"""siglip embed: embed images (or texts) into an index folder that `siglip search` reads.

    siglip embed photos/ --model siglip_b16.pt --out photos.index
    siglip embed pairs.csv --model /models/siglip-base-patch16-224 --out pairs.index --dtype float16
    siglip embed '/data/shards/{00000..00099}.tar' --model m.pt --out laion.index --workers 8
    siglip embed --texts captions.txt --model m.pt --out captions.index
    torchrun --nproc_per_node 8 -m siglip embed /data/photos --model m.pt --out photos.index

SRC: a folder (every image in it, recursively), a manifest (.csv/.tsv/.jsonl: an image column and an
optional caption column), webdataset shards, or --texts FILE (one text a line). INDEX/ gets the
embeddings (.npy, one unit row per item, float16 unless --store-dtype float32), items.jsonl (path or
shard key, caption if any) and meta.json (model, weights fingerprint, dim, dtype, count, skipped
files with the reason). Unreadable images are skipped and listed. Run it again after an interruption
or on a grown folder: only the items the index lacks are embedded. Under torchrun each process
embeds its share (on its own GPU where there is one) and process 0 merges them into one index.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from siglip.cli.common import add_model_arguments, load_model, print_json
from siglip.distributed import barrier, close_runtime, init_runtime
from siglip.index.build import EmbedOptions, embed_items
from siglip.index.sources import list_items
from siglip.index.store import mark_replace


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "src", nargs="?", default="", help="folder, manifest (.csv/.tsv/.jsonl) or shards ('{0000..0099}.tar')"
    )
    p.add_argument("--texts", default="", help="embed the texts of this file (one a line) instead of images")
    p.add_argument("--out", required=True, help="the index folder (created; resumed if it exists)")
    add_model_arguments(p)
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    p.add_argument("--store-dtype", default="float16", choices=("float16", "float32"), help="dtype of the stored rows")
    p.add_argument("--unit-size", type=int, default=4096, help="items per part written (what an interruption loses)")
    p.add_argument("--image-column", default="", help="manifest column of image paths (default: detected)")
    p.add_argument("--caption-column", default="", help="manifest column of captions (default: detected, optional)")
    p.add_argument("--overwrite", action="store_true", help="start the index afresh")
    p.add_argument("--json", action="store_true", help="print meta.json's summary as JSON")


def _clear(index: Path) -> None:
    """--overwrite: the next commit replaces the items; until then the index stays as it is (a server
    serving it keeps answering from it, then switches to the new set at once)."""
    mark_replace(index)


def run(args: argparse.Namespace) -> int:
    if bool(args.src) == bool(args.texts):
        raise ValueError("give either SRC (images) or --texts FILE")
    rt = init_runtime(args.device)
    try:
        model = load_model(args, device=str(rt.device))
        if args.texts:
            model.tokenizer  # noqa: B018 - fails now, with how to pass one, rather than after listing
        items = list_items(args.texts or args.src, bool(args.texts), args.image_column, args.caption_column)
        out = Path(args.out)
        if args.overwrite and rt.is_main and out.is_dir():
            _clear(out)
        barrier(rt)
        opts = EmbedOptions(
            kind="text" if args.texts else "image", batch_size=args.batch_size, workers=args.workers,
            unit_size=args.unit_size, store_dtype=args.store_dtype, source=str(args.texts or args.src),
        )  # fmt: skip
        try:
            meta = embed_items(model, items, out, opts, rt)
        except OSError as e:  # a full disk or a read-only folder: one clear line, no traceback
            raise RuntimeError(
                f"cannot write the index {out}: {e.strerror or e}; what it held before this run is unchanged"
            ) from e
    finally:
        close_runtime(rt)
    if rt.is_main:
        summary = {k: meta[k] for k in ("count", "dim", "dtype", "fingerprint", "model")}
        summary.update(index=str(out), skipped=len(meta["skipped"]))
        if args.json:
            print_json(summary)
        else:
            print(
                f"{out}: {meta['count']} rows of {meta['dim']} ({meta['dtype']}), {len(meta['skipped'])} skipped "
                f"(listed in {out / 'meta.json'}), model fingerprint {meta['fingerprint']}"
            )
    return 0
