"""Approximate search at scale: a clustered float16 index on disk (written in chunks, never whole in
memory), `siglip index` (auto) under a memory budget, then recall@10 and the median query latency of
`siglip.index.open(...).search` against the exact chunked scan, on the same data in the same run.

    nice python benchmarks/ann.py --rows 10000000 --dim 768 --max-memory 2G --dir /work/ann-bench
    python benchmarks/ann.py --rows 200000 --dim 768                # minutes
    -> the plan chosen, build time, index RAM (its bytes, and the RSS a fresh process gains loading it),
       recall@1/10/100 measured by the build, then on new queries: recall@10 and median latency,
       approximate vs exact, and the ratio; and the median again with the rows file dropped from the
       page cache before each query (the re-ranked candidates then come from disk). Targets at
       10M x 768 on 2 cores: recall@10 >= 0.95, median query <= 20 ms and >= 50x the exact scan,
       RAM <= 2 GB, build <= 45 min.

Rows: a mixture of Gaussians on the sphere whose clusters overlap (each point lies between two of
1024 random centres, plus noise), the structure real embeddings have; the queries are new points of
the same mixture, not in the index. The data is kept in --dir and reused by the next run of the same
size; the approximate index is rebuilt each run (delete --dir afterwards: 10M x 768 is 15 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from siglip.index.ann_build import BuildOptions, build  # noqa: E402
from siglip.index.ann_plan import fmt_size  # noqa: E402
from siglip.index.store import FORMAT, VERSION, atomic_npy, read_meta, write_meta  # noqa: E402

CHUNK = 100_000
CLUSTERS = 1024


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    """(n, d) float32 unit rows between two random centres each, plus noise of norm ~0.6."""
    d = centres.shape[1]
    a, b = rng.integers(len(centres), size=n), rng.integers(len(centres), size=n)
    w = rng.uniform(size=(n, 1)).astype(np.float32)
    x = w * centres[a] + (1 - w) * centres[b]
    x += rng.standard_normal((n, d), dtype=np.float32) * np.float32(0.6 / np.sqrt(d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def centres_for(d: int) -> np.ndarray:
    c = np.random.default_rng(0).standard_normal((CLUSTERS, d)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def make_index(index: Path, n: int, d: int) -> None:
    """INDEX/ as `siglip embed` writes it: n clustered float16 rows, written CHUNK rows at a time."""
    meta = read_meta(index) if (index / "meta.json").is_file() else None
    if meta and meta["count"] == n and meta["dim"] == d:
        return
    index.mkdir(parents=True, exist_ok=True)
    rows = np.lib.format.open_memmap(index / "embeddings-1.npy", mode="w+", dtype=np.float16, shape=(n, d))
    offsets, pos, centres = np.zeros(n, dtype=np.int64), 0, centres_for(d)
    with open(index / "items-1.jsonl", "w") as items:
        for s in tqdm(range(0, n, CHUNK), desc="write rows", unit="chunk"):
            m = min(CHUNK, n - s)
            rows[s : s + m] = clustered(np.random.default_rng([1, s]), centres, m)
            lines = [f'{{"path": "r{i}.jpg", "id": "r{i}.jpg"}}\n' for i in range(s, s + m)]
            lens = np.fromiter((len(x) for x in lines), dtype=np.int64, count=m)
            offsets[s : s + m] = pos + np.concatenate([[0], np.cumsum(lens)[:-1]])
            pos += int(lens.sum())
            items.write("".join(lines))
    rows.flush()
    del rows
    atomic_npy(index / "items-1.offsets.npy", offsets)
    write_meta(index, {
        "format": FORMAT, "version": VERSION, "kind": "image", "model": "benchmark", "fingerprint": "benchmark",
        "dim": d, "dtype": "float16", "count": n, "generation": 1, "skipped": [], "source": "benchmarks/ann.py",
        "embeddings": "embeddings-1.npy", "items": "items-1.jsonl", "offsets": "items-1.offsets.npy",
    })  # fmt: skip


CHILD = r"""
import json, os, sys, time, statistics
import numpy as np, torch
torch.set_num_threads(2)
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
import siglip.index
idx = siglip.index.open(sys.argv[1])
q = np.load(sys.argv[2])
before = rss()
assert idx.ann is not None, "no usable approximate index"
loaded = rss() - before
idx.search(q[:1], 10)  # first query: warms the search path
times, ids = [], []
for j in range(len(q)):
    t = time.perf_counter()
    _, r = idx.search(q[j : j + 1], 10)
    times.append(time.perf_counter() - t)
    ids.append(r[0].tolist())
cold = []  # the rows file dropped from the page cache before each query: its candidates come from disk
rows_file = idx.path / idx.meta["embeddings"]
fd = os.open(rows_file, os.O_RDONLY)
for j in range(min(len(q), 30)):
    idx.rows = None  # unmap (the kernel keeps mapped pages), drop the file's pages, map it again
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    idx.rows = siglip.index.handle.map_rows(rows_file)
    t = time.perf_counter()
    idx.search(q[j : j + 1], 10)
    cold.append(time.perf_counter() - t)
print(json.dumps({"rss": loaded, "median": statistics.median(times), "cold": statistics.median(cold), "ids": ids}))
"""


def approximate_in_child(index: Path, queries: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(index), str(queries)], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"approximate search failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def exact(index: Path, q: np.ndarray, timed: int) -> tuple[np.ndarray, float]:
    """Exact top 10 of all queries (batched), and the median single-query time over `timed` of them."""
    import torch

    from siglip.index.search import topk_file

    rows_file = index / read_meta(index)["embeddings"]
    _, ids = topk_file(rows_file, torch.from_numpy(q), 10)
    times = []
    for j in range(timed):
        t = time.perf_counter()
        topk_file(rows_file, torch.from_numpy(q[j : j + 1]), 10)
        times.append(time.perf_counter() - t)
    return ids.numpy(), statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--max-memory", default="2G")
    p.add_argument("--dir", default="/tmp/siglip_bench_ann")
    p.add_argument("--queries", type=int, default=100, help="new points of the mixture that query both searches")
    p.add_argument("--exact-repeats", type=int, default=3, help="single-query exact scans timed")
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    index = Path(args.dir) / f"idx-{args.rows}x{args.dim}"
    t0 = time.perf_counter()
    make_index(index, args.rows, args.dim)
    print(f"data: {args.rows} x {args.dim} float16 on disk, {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    desc = build(index, BuildOptions(max_memory=args.max_memory, queries=100, texts=False))
    total = time.perf_counter() - t0
    q = clustered(np.random.default_rng(99), centres_for(args.dim), args.queries)
    np.save(Path(args.dir) / "queries.npy", q)
    got = approximate_in_child(index, Path(args.dir) / "queries.npy")
    truth, exact_s = exact(index, q, args.exact_repeats)
    r10 = float(np.mean([len(np.intersect1d(a, t)) / 10 for a, t in zip(got["ids"], truth)]))
    plan, rec = desc["plan"], desc["recall"]["rows"]
    print(f"index: {args.rows} x {args.dim} float16 ({fmt_size(args.rows * args.dim * 2)}), budget {args.max_memory}, "
          f"2 threads; auto chose {desc['kind']} ({plan['nlist']} lists{codes(plan)}), "
          f"nprobe {plan['nprobe']}, {plan['rerank']}x candidates re-ranked")  # fmt: skip
    print(f"build (train + add): {desc['build_seconds'] / 60:.1f} min; with recall measurement and tuning "
          f"{total / 60:.1f} min")  # fmt: skip
    print(f"index RAM: {fmt_size(desc['memory_bytes'])} (a fresh process gains {fmt_size(got['rss'])} loading it)")
    print(f"build's held-out rows ({rec['queries']}): " + ", ".join(
        f"{k} {v:.4f}" for k, v in rec.items() if k.startswith("recall@")))  # fmt: skip
    print(f"new queries ({args.queries}): recall@10 {r10:.4f}; median query {got['median'] * 1000:.2f} ms "
          f"approximate vs {exact_s * 1000:.0f} ms exact chunked scan: {exact_s / got['median']:.0f}x faster")  # fmt: skip
    print(f"the same queries with the rows file dropped from the page cache before each (candidates read from "
          f"disk): median {got['cold'] * 1000:.2f} ms")  # fmt: skip


def codes(plan: dict) -> str:
    if plan["kind"] != "ivf-pq":
        return ""
    bits = plan.get("nbits", 8)
    return f", {plan['m']} {bits}-bit PQ codes = {plan['m'] * bits // 8} bytes a row"


if __name__ == "__main__":
    main()
