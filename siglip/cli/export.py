"""siglip export: hand an index's rows to the engines that scale search past one machine.

    siglip export photos.index --to clip-retrieval photos_emb/          # img_emb/, metadata/ (autofaiss, clip-back)
    siglip export photos.index --to milvus --uri photos.db --collection photos
    siglip export photos.index --to milvus --uri http://host:19530 --collection photos --json
    siglip export photos.index --to lancedb --uri photos.lance --table photos

Every target gets one schema: id (int64, the row in the index), embedding (the index's dimension,
unit rows: inner product is cosine), path (the image path, shard::key, or "" for a text index) and
caption ("" when unknown). The rows are streamed from the index a batch at a time (--batch-rows),
never the whole matrix in memory, with progress. Every export is resumable: after a kill the same
command keeps the clip-retrieval parts already complete, or the ids already in the collection, and
writes the rest. --json prints what was written.
"""

from __future__ import annotations

import argparse
import importlib

from siglip.cli.common import print_json
from siglip.export import TARGETS, Options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", help="an index folder written by siglip embed")
    p.add_argument("dest", nargs="?", default="", help="the output folder (--to clip-retrieval)")
    targets = "; ".join(f"{name}: {line}" for name, (_, line) in TARGETS.items())
    p.add_argument("--to", required=True, choices=sorted(TARGETS), help=f"the target format or engine ({targets})")
    p.add_argument("--uri", default="", help="the engine's URI: a file or folder for its local mode, or a server URL")
    p.add_argument("--collection", "--table", dest="name", default="", help="the collection (table) to write")
    p.add_argument("--batch-rows", type=int, default=8192, help="rows read and written at a time")
    p.add_argument("--part-rows", type=int, default=1_000_000, help="rows per file of a clip-retrieval folder")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    # `INDEX --to NAME DEST`: plain parse_args binds both positionals at INDEX (DEST empty), then refuses DEST
    p.parse_args = p.parse_intermixed_args


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(TARGETS[args.to][0])
    dest = args.dest or args.uri
    if not dest:
        raise ValueError(f"--to {args.to}: give the destination (a folder, or --uri)")
    opts = Options(
        dest=dest, name=args.name or "siglip", batch_rows=args.batch_rows, part_rows=args.part_rows,
        progress=not args.json,
    )  # fmt: skip
    report = module.export(args.index, opts)
    if args.json:
        print_json(report)
    else:
        print("\n".join(f"{k}: {v}" for k, v in report.items()))
    return 0
