"""What hostile requests cost `siglip serve`: each one's answer, its median latency, and the server's
resident memory before and after (a tiny random model and a 6-image index, built in a temp folder).

    python benchmarks/serve_limits.py                # ~1 minute on 2 cores
    python benchmarks/serve_limits.py --repeats 9 --json
    -> per case: status, median ms, server RSS MiB before -> after. Targets: a 30,000 x 30,000 PNG
       refused (400) in well under a second with no memory growth (decoded it would be ~900 MB);
       a 50 MB body refused (413) without being held; 200 concurrent requests answered 200 or 503.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def png_bomb(side: int) -> bytes:
    """A valid 1-bit black PNG of side x side, compressed row by row (~110 kB for 30,000)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\x00" * (1 + (side + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def build(root: Path) -> tuple[Path, Path]:
    """A tiny random model and an index of 6 small images, with the siglip command."""
    import torch
    from PIL import Image

    import siglip
    from siglip.config import ModelConfig
    from siglip.model import SigLIP
    from siglip.tokenizer import Tokenizer

    tok = Tokenizer.train(["a red square", "a blue circle", "a photo of a cat", "two dogs"] * 8, 64, 16)
    torch.manual_seed(0)
    net = SigLIP(ModelConfig.from_variant("mu/4", image_size=32, text_length=16, vocab_size=tok.vocab_size))
    siglip.save_model(root / "m.pt", net, tok, "bicubic")
    for i in range(6):
        (root / "photos").mkdir(exist_ok=True)
        Image.new("RGB", (40 + i, 30), (40 * i, 200 - 30 * i, 90)).save(root / "photos" / f"{i}.png")
    cmd = [sys.executable, "-m", "siglip", "embed", str(root / "photos"), "--model", str(root / "m.pt")]
    subprocess.run([*cmd, "--out", str(root / "photos.index"), "--workers", "0"], check=True, capture_output=True)
    return root / "m.pt", root / "photos.index"


def start(model: Path, index: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    args = ["--model", str(model), "--index", f"photos={index}", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "siglip", "serve", *args], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"siglip serve did not start: {log.read_text()[-2000:]}")


def rss_mib(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) // 1024


def burst(url: str, n: int) -> list[int]:
    async def go():
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=n), timeout=120) as c:
            jobs = [c.post(url + "/v1/embeddings", json={"input": ["a cat", f"dog {i}"]}) for i in range(n)]
            return [r.status_code for r in await asyncio.gather(*jobs)]

    return asyncio.run(go())


def cases(url: str) -> dict:
    """name -> a function sending the request once and returning the status."""
    bomb30k, bomb8k = (base64.b64encode(png_bomb(s)).decode() for s in (30_000, 8_000))
    big = b'{"input": "' + b"a" * (50 << 20) + b'"}'

    def chunked():
        for _ in range(50):
            yield b"a" * (1 << 20)

    def post(path: str, **kw) -> int:
        try:
            return httpx.post(url + path, timeout=120, **kw).status_code
        except httpx.TransportError:  # the server closed while the client still sent
            return -1

    return {
        f"30000 x 30000 PNG ({len(bomb30k) // 1000} kB base64)": lambda: post("/v1/search", json={"image": bomb30k}),
        f"8000 x 8000 PNG ({len(bomb8k) // 1000} kB base64)": lambda: post("/v1/search", json={"image": bomb8k}),
        "50 MB body, Content-Length": lambda: post("/v1/embeddings", content=big),
        "50 MB body, chunked": lambda: post("/v1/embeddings", content=chunked()),
        "malformed JSON": lambda: post("/v1/search", content=b"{not json"),
        "a text query (for scale)": lambda: post("/v1/search", json={"text": "a red square", "k": 3}),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--concurrent", type=int, default=200)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="siglip_serve_limits_"))
    print("building a tiny model and index, starting siglip serve ...", file=sys.stderr)
    proc, url = start(*build(root), root / "server.log")
    results = []
    try:
        for name, send in cases(url).items():
            before, times, statuses = rss_mib(proc.pid), [], set()
            for _ in range(args.repeats):
                t = time.perf_counter()
                statuses.add(send())
                times.append((time.perf_counter() - t) * 1000)
            results.append({"case": name, "status": sorted(statuses), "median_ms": statistics.median(times),
                            "rss_before_mib": before, "rss_after_mib": rss_mib(proc.pid)})  # fmt: skip
            print(f"  {name}: done", file=sys.stderr)
        before, t = rss_mib(proc.pid), time.perf_counter()
        codes = burst(url, args.concurrent)
        results.append({"case": f"{args.concurrent} concurrent embeddings", "status": sorted(set(codes)),
                        "median_ms": (time.perf_counter() - t) * 1000, "rss_before_mib": before,
                        "rss_after_mib": rss_mib(proc.pid), "counts": {c: codes.count(c) for c in set(codes)}})  # fmt: skip
        results.append({"case": "/health afterwards", "status": [httpx.get(url + "/health").status_code]})
    finally:
        proc.terminate()
        proc.wait(30)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"{'case':<34} {'status':<10} {'median ms':>10}  server RSS MiB")
    for r in results:
        status = ",".join(map(str, r["status"]))
        ms = f"{r['median_ms']:10.0f}" if "median_ms" in r else " " * 10
        rss = f"{r['rss_before_mib']} -> {r['rss_after_mib']}" if "rss_before_mib" in r else ""
        print(f"{r['case']:<34} {status:<10} {ms}  {rss}" + (f"  {r['counts']}" if "counts" in r else ""))
    print(f"(the {args.concurrent}-request line's time is the whole burst's wall time)")


if __name__ == "__main__":
    main()
