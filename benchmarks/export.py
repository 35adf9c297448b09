"""`siglip export` throughput and memory: a synthetic index of --rows x --dim float16 unit rows (written
in chunks, never whole in memory) exported to every target `siglip.export.TARGETS` lists, each in its
own process, plus a pass that only reads the rows (the export's own floor). Prints, per target, rows/s
and the process's resident memory at 1/4, 1/2, 3/4 of the rows and at the end (in brackets its
anonymous part: RSS also counts file pages a process maps, e.g. an engine's own files; the rows are
read with pread, not mapped), its peak RSS and the largest anonymous part seen after a batch:
a streaming export's anonymous memory stays flat after the first quarter. A target whose extra is
missing is skipped with a line.

    nice python benchmarks/export.py --rows 200000 --dim 768
    nice python benchmarks/export.py --rows 1000000 --dim 768 --dir /work/export-bench --keep   # reuse: --index

Milvus Lite runs inside the exporting process (pure Python in milvus-lite 3), so its memory counts in
that process's RSS; `milvus@server` exports the same rows to Milvus Lite's gRPC server started in its
own process (`python -m milvus_lite server`: a Milvus server's API), so the exporter's own memory
shows apart from the engine's (printed after it).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
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
    """(VmRSS, RssAnon) of this process, MiB. RSS also counts the pages of files it maps (page cache,
    given back under pressure); RssAnon is the process's own memory."""
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

    def watched(gen, batch_rows=8192, start=0, **kw):  # kw: rows.py's other options (dtype)
        quarters = [(q, gen.count * q // 4) for q in (1, 2, 3)]
        for batch in read(gen, batch_rows, start, **kw):
            yield batch
            marks["anon_peak"] = max(marks.get("anon_peak", (0, 0)), memory(), key=lambda m: m[1])
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
            module = importlib.import_module(TARGETS[target.split("@")[0]][0])
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


def milvus_server(data: Path) -> tuple[subprocess.Popen, str]:
    """Milvus Lite's gRPC server in its own process (the API of a Milvus server), and its URL."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data), "--host", "127.0.0.1"]
    server = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(150):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    return server, f"http://127.0.0.1:{port}"


def run_target(target: str, index: Path, work: Path, batch_rows: int) -> str:
    """`milvus@server`: the same export to a server in another process, whose memory is then the server's."""
    dest, server = work / DEST.get(target, target), None
    shutil.rmtree(dest, ignore_errors=True)
    if target == "milvus@server":
        server, url = milvus_server(dest)
    cmd = [sys.executable, __file__, "--child", target, "--index", str(index), "--dest", url if server else str(dest)]
    try:
        out = subprocess.run([*cmd, "--batch-rows", str(batch_rows)], capture_output=True, text=True)
        if server:
            status = dict(x.split(":", 1) for x in open(f"/proc/{server.pid}/status"))
            served = f"; the server's RSS {int(status['VmRSS'].split()[0]) / 1024:.0f} MiB"
            served += f", peak {int(status['VmHWM'].split()[0]) / 1024:.0f} MiB"
    finally:
        if server:
            server.kill()
            server.wait()
    if out.returncode != 0:
        return f"{target:15s} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if "skipped" in r:
        return f"{target:15s} skipped: {r['skipped']}"
    anon_peak = r["marks"].pop("anon_peak", (0, 0))[1]
    rss = ", ".join(f"{k} {v[0]:.0f} ({v[1]:.0f})" for k, v in r["marks"].items())
    return (
        f"{target:15s} {r['rows']} rows in {r['seconds']:.1f} s: {r['rows'] / r['seconds']:,.0f} rows/s; "
        f"RSS (anon) MiB at {rss}; peak RSS {r['peak_mib']:.0f} MiB, anon {anon_peak:.0f} MiB after a batch"
        + (served if server else "")
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
        if not args.targets and "milvus" in TARGETS and importlib.util.find_spec("milvus_lite"):
            targets.append("milvus@server")
        for target in targets:
            print(run_target(target, index, work, args.batch_rows), flush=True)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
