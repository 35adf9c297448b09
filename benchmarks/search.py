"""Exact top-10 over a 1,000,000 x 768 float16 index on disk: `siglip search`'s chunked scan against
a plain numpy full matmul on the same file, each in its own process, alternating, medians.

    python benchmarks/search.py                     # writes /tmp/siglip_bench_search/rows.npy once (1.5 GB)
    python benchmarks/search.py --rows 200000 --repeats 5
    -> per method: median time, peak extra memory (max RSS minus RSS before the search), whether
       the top 10 agree; then the ratios. Target: under 1 s and under 1 GiB extra on 2 cores.

The first repeat of each method also warms the page cache; medians are over all repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
import numpy as np
method, path, seed, k = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
import torch
torch.set_num_threads(2)
from siglip.index.search import topk_file
d = np.load(path, mmap_mode="r").shape[1]
q = np.random.default_rng(seed).standard_normal(d).astype(np.float32)
q /= np.linalg.norm(q)
before = rss()
t = time.perf_counter()
if method == "siglip":
    scores, rows = topk_file(path, torch.from_numpy(q)[None], k)
    top = rows[0].tolist()
else:  # the plain way: load it all, one matmul, argpartition
    emb = np.load(path)
    s = emb @ q
    part = np.argpartition(-s, k)[:k]
    top = part[np.argsort(-s[part])].tolist()
took = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"time": took, "extra": peak - before, "top": top}))
"""


def make_index(path: Path, n: int, d: int) -> None:
    if path.is_file() and np.load(path, mmap_mode="r").shape == (n, d):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"writing {n} x {d} float16 unit rows to {path} ...", flush=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, d))
    rng = np.random.default_rng(0)
    for s in range(0, n, 100_000):
        x = rng.standard_normal((min(100_000, n - s), d), dtype=np.float32)
        out[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()


def run(method: str, path: Path, seed: int, k: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, method, str(path), str(seed), str(k)], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"{method} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--path", default="/tmp/siglip_bench_search/rows.npy")
    args = p.parse_args()
    path = Path(args.path)
    make_index(path, args.rows, args.dim)
    got: dict[str, list[dict]] = {"siglip": [], "numpy": []}
    for r in range(args.repeats):
        for method in ("siglip", "numpy") if r % 2 == 0 else ("numpy", "siglip"):
            got[method].append(run(method, path, r, args.k))
    agree = all(a["top"] == b["top"] for a, b in zip(got["siglip"], got["numpy"]))
    print(f"index: {args.rows} x {args.dim} float16 on disk ({path.stat().st_size / 2**30:.2f} GiB), top-{args.k}, "
          f"{args.repeats} repeats alternating, 2 threads")  # fmt: skip
    med = {}
    for method, label in (("siglip", "siglip search (chunked exact scan)"), ("numpy", "numpy (np.load + full matmul)")):
        t = statistics.median(x["time"] for x in got[method])
        m = statistics.median(x["extra"] for x in got[method]) / 2**30
        med[method] = (t, m)
        print(f"{label:<36} median {t:6.3f} s   peak extra memory {m:5.2f} GiB")
    print(f"ratio numpy / siglip: time {med['numpy'][0] / med['siglip'][0]:.1f}x, "
          f"memory {med['numpy'][1] / max(med['siglip'][1], 1e-9):.1f}x; same top-{args.k}: {agree}")  # fmt: skip


if __name__ == "__main__":
    main()
