"""What hostile requests cost `siglip serve`: each one's answer, its median latency, and the server's
resident memory before and after (a tiny random model and a 6-image index, built in a temp folder).

    python benchmarks/serve_limits.py                # ~1.5 minutes on 2 cores
    python benchmarks/serve_limits.py --repeats 9 --json
    -> per case: status, median ms, server RSS MiB before -> after. Targets: a 30,000 x 30,000 PNG
       refused (400) in well under a second with no memory growth (decoded it would be ~900 MB);
       a 50 MB body refused (413) without being held; 200 concurrent requests answered 200 or 503;
       a foreign Host 421, a text/plain body 415, a TIFF 415; slow clients (headers or bodies a
       byte at a time, as many bodies as --max-concurrent) cut off with 408 at the deadlines the
       server is started with here (--deadline, 3 s), normal requests served once they are, and
       the server's open files back where they were.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
JSON, PLAIN = {"Content-Type": "application/json"}, {"Content-Type": "text/plain;charset=UTF-8"}


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


def start(model: Path, index: Path, log: Path, deadline: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    args = ["--model", str(model), "--index", f"photos={index}", "--port", str(port), "--log-level", "warning"]
    args += ["--header-timeout", str(deadline), "--body-timeout", str(deadline)]
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


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def dribble(port: int, n: int, head: bytes, filler: bytes, seconds: float) -> list[tuple[float, bytes]]:
    """n raw connections: `head` at once, then `filler` a byte per 0.2 s on each until the server
    answers and closes it. -> (seconds until closed, first line of the answer) per closed connection."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
    sel, start, out = selectors.DefaultSelector(), time.monotonic(), []
    for s in socks:
        s.sendall(head)
        sel.register(s, selectors.EVENT_READ)
    pos = 0
    while sel.get_map() and time.monotonic() - start < seconds:
        for key in list(sel.get_map().values()):
            try:
                key.fileobj.send(filler[pos : pos + 1])
            except OSError:
                pass
        pos = (pos + 1) % len(filler)
        for key, _ in sel.select(0.2):
            try:
                answer = key.fileobj.recv(65536)
            except OSError:
                answer = b""
            out.append((time.monotonic() - start, answer.split(b"\r\n", 1)[0]))
            sel.unregister(key.fileobj)
    for s in socks:
        s.close()
    return out


def slow_clients(url: str, pid: int, n: int, body: bool, seconds: float) -> dict:
    """n slow clients (headers, or bodies, a byte at a time) while a normal client searches."""
    port = int(url.rsplit(":", 1)[1])
    head = b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body:
        head += b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    filler = b" " * 1000 if body else b"X-Pad: " + b"a" * 1000
    files, cut, normal = open_files(pid), [], []
    worker = threading.Thread(target=lambda: cut.extend(dribble(port, n, head, filler, seconds)))
    worker.start()
    while worker.is_alive():
        t = time.perf_counter()
        code = httpx.post(url + "/v1/search", json={"text": "a red square", "k": 3}, timeout=120).status_code
        normal.append((code, (time.perf_counter() - t) * 1000))
        time.sleep(0.25)
    worker.join()
    time.sleep(0.5)
    after = httpx.post(url + "/v1/search", json={"text": "a red square", "k": 3}, timeout=120).status_code
    firsts = sorted({line.decode(errors="replace")[9:12] or "closed" for _, line in cut})
    note = {"cut": f"{len(cut)}/{n}", "cut after s (median)": round(statistics.median(t for t, _ in cut), 2) if cut else None,
            "normal meanwhile": {c: [x for x, _ in normal].count(c) for c in sorted({x for x, _ in normal})},
            "normal after": after, "server open files": f"{files} -> {open_files(pid)}"}  # fmt: skip
    return {"status": firsts, "median_ms": statistics.median(ms for _, ms in normal) if normal else 0, "counts": note}


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
    query, tiff_bytes = {"text": "a red square", "k": 3}, io.BytesIO()
    Image.new("RGB", (40, 30), (200, 40, 40)).save(tiff_bytes, format="TIFF")
    tiff = base64.b64encode(tiff_bytes.getvalue()).decode()

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
        "50 MB body, Content-Length": lambda: post("/v1/embeddings", content=big, headers=JSON),
        "50 MB body, chunked": lambda: post("/v1/embeddings", content=chunked(), headers=JSON),
        "malformed JSON": lambda: post("/v1/search", content=b"{not json", headers=JSON),
        "Host: evil.example (DNS rebinding)": lambda: post("/v1/search", json=query, headers={"Host": "evil.example"}),
        "text/plain body to /v1/search": lambda: post("/v1/search", content=json.dumps(query), headers=PLAIN),
        "TIFF upload": lambda: post("/v1/search", json={"image": tiff}),
        "a text query (for scale)": lambda: post("/v1/search", json={"text": "a red square", "k": 3}),
    }


def measure(url: str, pid: int, args: argparse.Namespace) -> list[dict]:
    results = []
    for name, send in cases(url).items():
        before, times, statuses = rss_mib(pid), [], set()
        for _ in range(args.repeats):
            t = time.perf_counter()
            statuses.add(send())
            times.append((time.perf_counter() - t) * 1000)
        results.append({"case": name, "status": sorted(statuses), "median_ms": statistics.median(times),
                        "rss_before_mib": before, "rss_after_mib": rss_mib(pid)})  # fmt: skip
        print(f"  {name}: done", file=sys.stderr)
    before, t = rss_mib(pid), time.perf_counter()
    codes = burst(url, args.concurrent)
    results.append({"case": f"{args.concurrent} concurrent embeddings", "status": sorted(set(codes)),
                    "median_ms": (time.perf_counter() - t) * 1000, "rss_before_mib": before,
                    "rss_after_mib": rss_mib(pid), "counts": {c: codes.count(c) for c in set(codes)}})  # fmt: skip
    for n, body in ((args.slow, False), (args.slow_bodies, True)):
        before = rss_mib(pid)
        slow = slow_clients(url, pid, n, body, seconds=args.deadline + 15)
        name = f"{n} slow {'bodies' if body else 'headers'}, byte/0.2 s"
        results.append({"case": name, **slow, "rss_before_mib": before, "rss_after_mib": rss_mib(pid)})
        print(f"  {name}: done", file=sys.stderr)
    results.append({"case": "/health afterwards", "status": [httpx.get(url + "/health").status_code]})
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--concurrent", type=int, default=200)
    p.add_argument("--deadline", type=float, default=3.0, help="the server's --header-timeout and --body-timeout")
    p.add_argument("--slow", type=int, default=100, help="clients sending their headers a byte at a time")
    p.add_argument("--slow-bodies", type=int, default=256, help="clients sending bodies so (the server's slots)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="siglip_serve_limits_"))
    print("building a tiny model and index, starting siglip serve ...", file=sys.stderr)
    proc, url = start(*build(root), root / "server.log", args.deadline)
    try:
        results = measure(url, proc.pid, args)
    finally:
        proc.terminate()
        proc.wait(30)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"{'case':<38} {'status':<10} {'median ms':>10}  server RSS MiB")
    for r in results:
        status = ",".join(map(str, r["status"]))
        ms = f"{r['median_ms']:10.0f}" if "median_ms" in r else " " * 10
        rss = f"{r['rss_before_mib']} -> {r['rss_after_mib']}" if "rss_before_mib" in r else ""
        print(f"{r['case']:<38} {status:<10} {ms}  {rss}" + (f"  {r['counts']}" if "counts" in r else ""))
    print(f"(the {args.concurrent}-request line's time is the whole burst's wall time; a slow-client line's status")
    print(" is what the slow clients got, its median ms the normal client's searches meanwhile)")


if __name__ == "__main__":
    main()
