"""`siglip export` throughput and memory: a synthetic index of --rows x --dim float16 unit rows (written
in chunks, never whole in memory) exported to every target `siglip.export.TARGETS` lists, each in its
own process, plus a pass that only reads the rows (the export's own floor). Prints, per target, rows/s
and the process's resident memory at 1/4, 1/2, 3/4 of the rows and at the end (in brackets its
anonymous part: RSS also counts the pages of the memory-mapped rows file read so far, page cache that
the kernel takes back under pressure), and its peak RSS: a streaming export's anonymous memory stays
flat after the first quarter. A target whose extra is missing is skipped with a line.

    nice python benchmarks/export.py --rows 200000 --dim 768
    nice python benchmarks/export.py --rows 1000000 --dim 768 --dir /work/export-bench --keep   # reuse: --index

Milvus Lite runs inside the exporting process (pure Python in milvus-lite 3), so its memory counts in
that process's RSS; against a Milvus server the engine's memory is the server's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from siglip.export import TARGETS, Options  # noqa: E402
from siglip.index.store import FORMAT, VERSION, atomic_npy, write_meta  # noqa: E402

CHUNK = 65536
DEST = {"milvus": "bench.db"}  # the rest: a folder named for the target


def make_index(index: Path, n: int, d: int) -> None:
    """An index folder as `siglip embed` writes it: float16 unit rows, items with a path and a caption."""
    index.mkdir(parents=True, exist_ok=True)
    rows = np.lib.format.open_memmap(index / "embeddings-1.npy", mode="w+", dtype=np.float16, shape=(n, d))
    offsets, pos, rng = np.zeros(n, dtype=np.int64), 0, np.random.default_rng(0)
    with open(index / "items-1.jsonl", "wb") as items:
        for s in range(0, n, CHUNK):
            m = min(CHUNK, n - s)
            x = rng.standard_normal((m, d), dtype=np.float32)
            rows[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
            lines = [
                json.dumps({"path": f"photos/{i // 1000:05d}/{i:09d}.jpg", "caption": f"photo {i}", "id": str(i)})
                for i in range(s, s + m)
            ]
            data = [(line + "\n").encode() for line in lines]
            lens = np.fromiter((len(b) for b in data), dtype=np.int64, count=m)
            offsets[s : s + m] = pos + np.concatenate([[0], np.cumsum(lens)[:-1]])
            pos += int(lens.sum())
            items.write(b"".join(data))
    rows.flush()
    del rows
    atomic_npy(index / "items-1.offsets.npy", offsets)
    write_meta(index, {
        "format": FORMAT, "version": VERSION, "kind": "image", "model": "/synthetic.pt", "fingerprint": "bench",
        "dim": d, "dtype": "float16", "count": n, "generation": 1, "skipped": [],
        "embeddings": "embeddings-1.npy", "items": "items-1.jsonl", "offsets": "items-1.offsets.npy",
    })  # fmt: skip


def memory() -> tuple[float, float]:
    """(VmRSS, RssAnon) of this process, MiB. RSS counts the pages of the memory-mapped rows file
    touched so far (page cache, given back under pressure); RssAnon is the process's own memory."""
    got = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            got[key] = int(value.split()[0]) / 1024
    return got["VmRSS"], got["RssAnon"]


def child(target: str, index: str, dest: str, batch_rows: int) -> None:
    """One export in this process, the RSS noted as the rows pass each quarter; a JSON line on stdout."""
    import siglip.export.rows as rows_module

    marks: dict[str, tuple[float, float]] = {}
    read = rows_module.iter_batches

    def watched(gen, batch_rows=8192, start=0):
        quarters = [(q, gen.count * q // 4) for q in (1, 2, 3)]
        for batch in read(gen, batch_rows, start):
            yield batch
            for q, at in quarters:
                if f"{q}/4" not in marks and batch.ids[-1] + 1 >= at:
                    marks[f"{q}/4"] = memory()

    rows_module.iter_batches = watched  # before the target imports it
    t0 = time.perf_counter()
    try:
        if target == "read-only":
            gen = rows_module.open_rows(index)
            n = sum(len(b) for b in rows_module.iter_batches(gen, batch_rows))
        else:
            module = importlib.import_module(TARGETS[target][0])
            n = module.export(index, Options(dest=dest, name="bench", batch_rows=batch_rows, progress=False))["rows"]
    except ModuleNotFoundError as e:
        print(json.dumps({"skipped": str(e)}))
        return
    seconds = time.perf_counter() - t0
    marks["end"] = memory()
    # VmHWM, not getrusage's ru_maxrss: that one survives fork + exec, so a child started right after
    # this script wrote the index reported the parent's peak (2389 MiB for a pass that reads 1.5 GiB)
    peak = next(int(x.split()[1]) / 1024 for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    print(json.dumps({"rows": n, "seconds": seconds, "marks": marks, "peak_mib": peak}))


def run_target(target: str, index: Path, work: Path, batch_rows: int) -> str:
    dest = work / DEST.get(target, target)
    shutil.rmtree(dest, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", target, "--index", str(index), "--dest", str(dest)]
    out = subprocess.run([*cmd, "--batch-rows", str(batch_rows)], capture_output=True, text=True)
    if out.returncode != 0:
        return f"{target:15s} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if "skipped" in r:
        return f"{target:15s} skipped: {r['skipped']}"
    rss = ", ".join(f"{k} {v[0]:.0f} ({v[1]:.0f})" for k, v in r["marks"].items())
    return (
        f"{target:15s} {r['rows']} rows in {r['seconds']:.1f} s: {r['rows'] / r['seconds']:,.0f} rows/s; "
        f"RSS (anon) MiB at {rss}; peak RSS {r['peak_mib']:.0f} MiB"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--batch-rows", type=int, default=8192)
    p.add_argument("--index", default="", help="reuse this index instead of writing one")
    p.add_argument("--dir", default="", help="work folder (default: a temporary one, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--targets", default="", help="comma-separated (default: every target, and read-only)")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--dest", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.index, args.dest, args.batch_rows)
    work = Path(args.dir or tempfile.mkdtemp(prefix="siglip-export-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        index = Path(args.index) if args.index else work / "index"
        if not args.index:
            t0 = time.perf_counter()
            make_index(index, args.rows, args.dim)
            print(f"index: {args.rows} x {args.dim} float16 written in {time.perf_counter() - t0:.0f} s ({index})")
        meta = json.loads((index / "meta.json").read_text())
        print(f"{meta['count']} x {meta['dim']} float16 rows, batches of {args.batch_rows}; load: {os.getloadavg()}")
        targets = args.targets.split(",") if args.targets else ["read-only", *TARGETS]
        for target in targets:
            print(run_target(target, index, work, args.batch_rows), flush=True)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
