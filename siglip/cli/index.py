"""siglip index: build an approximate index (faiss) beside an index's rows, under a memory budget,
and measure its recall against the exact scan.

    siglip index photos.index                                   # auto, 4G budget, tuned to recall@10 0.95
    siglip index laion.index --max-memory 2G --json
    siglip index laion.index --kind ivf-pq --nprobe 64
    siglip index laion.index --tune --target-recall 0.98        # re-tune the existing one, no rebuild
    siglip index laion_emb/ --model google/siglip-base-patch16-224   # a clip-retrieval folder: captions need a model

--kind auto chooses from the row count, the dimension and --max-memory: flat under 100k rows, IVF
with float32 rows when they fit, else IVF with 4-bit PQ codes (the most a row that fit). It trains on
a sample, then adds the rows in chunks from the memory-mapped embeddings (never all in memory),
with progress; Ctrl-C saves the work and the same command continues it. Held-out rows (and the
captions, when the index has them) then query both the approximate and the exact index: the search
effort (nprobe, candidates re-ranked) is the cheapest that reaches --target-recall, and recall@1/10/100
and the query latencies are printed and kept in INDEX/ann.json. `siglip search` and
`siglip.index.open(...).search` use it from then on; `siglip embed` adds new rows to it.
A clip-retrieval folder (img_emb/, metadata/) is imported first into INDEX/siglip-img_emb.index/,
where the approximate index is built (see siglip.index.clip_import); its captions are queries only
with --model (the folder names no model). Needs faiss: pip install 'siglip[ann]'.
"""

from __future__ import annotations

import argparse

from siglip.cli.common import print_json
from siglip.index.ann_build import BuildOptions, build, retune
from siglip.index.ann_plan import KINDS, fmt_size
from siglip.index.clip_import import resolve


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", help="an index folder written by siglip embed, or a clip-retrieval folder")
    p.add_argument("--kind", default="auto", choices=KINDS, help="the approximate index's family (default auto)")
    p.add_argument("--max-memory", default="4G", help="RAM the approximate index may take: 4G, 512M, ...")
    p.add_argument("--target-recall", type=float, default=0.95, help="recall@10 the search effort is tuned to")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists visited (HNSW: efSearch) instead of tuning")
    p.add_argument("--tune", action="store_true", help="re-tune the existing approximate index, no rebuild")
    p.add_argument("--queries", type=int, default=200, help="held-out rows that measure recall")
    p.add_argument("--no-texts", action="store_true", help="do not embed the captions as queries too")
    p.add_argument(
        "--model",
        default="",
        help="the model that embeds the captions (default the index's; a clip-retrieval folder names none)",
    )
    p.add_argument("--json", action="store_true", help="print ann.json")


def summary(desc: dict) -> list[str]:
    """Human lines for an ann.json."""
    plan = desc["plan"]
    effort = "efSearch" if plan["kind"] == "hnsw" else "nprobe"
    lines = [
        f"{desc['kind']}: {desc['rows']} rows, {fmt_size(desc['memory_bytes'])} RAM (budget "
        f"{fmt_size(desc['max_memory'])}), built in {desc['build_seconds']:.1f} s",
        f"  {effort} {plan['nprobe']}, {plan['rerank']} candidates per result re-ranked with the exact rows",
    ]
    for name, r in desc["recall"].items():
        at = ", ".join(f"{k} {v:.4f}" for k, v in r.items() if k.startswith("recall@"))
        lines.append(
            f"  {name} ({r['queries']} queries): {at}; median query {r['latency_ms']:.2f} ms "
            f"vs exact {r['exact_latency_ms']:.0f} ms ({r['exact_latency_ms'] / max(r['latency_ms'], 1e-9):.0f}x)"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    opts = BuildOptions(
        kind=args.kind, max_memory=args.max_memory, target_recall=args.target_recall, nprobe=args.nprobe,
        queries=args.queries, texts=not args.no_texts, progress=not args.json, model=args.model,
    )  # fmt: skip
    index = resolve(args.index, progress=not args.json)  # a clip-retrieval folder: its imported index beside it
    desc = retune(index, opts) if args.tune else build(index, opts)
    if args.json:
        print_json(desc)
    else:
        print("\n".join(summary(desc)))
    return 0
