"""Soak `siglip serve` on loopback: minutes of mixed valid and hostile traffic, slow clients, and an
append to the served index while it is busy, then what held.

    python benchmarks/serve_soak.py                    # 180 s, a tiny random model (mu/4, 32 px)
    python benchmarks/serve_soak.py --seconds 60 --json

    -> per case: its requests and the status codes they got; then
       5xx: 0 (must be 0), valid requests answered, their p50 / p99 latency, the server's RSS and
       open file descriptors (from /proc/PID) at the start and at the end, and the append's rows.
       The exit status is 1 when any request got a 5xx (the server log's last lines are printed).

Valid traffic (`--clients` closed-loop clients): texts and images on /v1/embeddings, searches by
text and by vector, clip-retrieval's /knn-service and /metadata, and the thumbnails the hits link to
(a thumbnail URL made before the append may answer 410 after it: the index changed; counted as
answered). Hostile traffic (`--hostile` clients): a garbage image among good ones, a lone surrogate,
1e39 and 1e-46 vectors, a huge k, unknown methods, a forged or expired thumbnail signature, a body
over --max-body, broken JSON; and `--slow` clients that send a request a byte at a time. At
--append-at of the run, `siglip embed` appends `--append` images to the served index; the server must show them, with no
error in between. Everything (model, images, index, server log) is written under a temporary
folder, or --workdir. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
WORDS = "a the photo of red blue green small big dog cat car house tree beach street night two three".split()
KEY = "soak-key"


# --- the model, the images and the index ---


def png(colour: tuple, size: int = 48) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), colour)
    ImageDraw.Draw(img).ellipse((8, 8, size - 8, size - 8), fill=tuple(255 - c for c in colour))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def write_images(folder: Path, n: int, start: int, seed: int) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        (folder / f"{i:04d}.png").write_bytes(png(tuple(rng.randrange(256) for _ in range(3))))


def prepare(work: Path, images: int, variant: str, image_size: int) -> Path:
    """A random-weight model at work/m.pt and an index of `images` images at work/photos.index."""
    import torch

    import siglip
    from siglip.config import ModelConfig
    from siglip.model import SigLIP
    from siglip.tokenizer import Tokenizer

    rng = random.Random(0)
    tok = Tokenizer.train([" ".join(rng.choices(WORDS, k=8)) for _ in range(500)], vocab_size=100, length=16)
    torch.manual_seed(0)
    cfg = ModelConfig.from_variant(variant, image_size=image_size, text_length=16, vocab_size=tok.vocab_size)
    siglip.save_model(work / "m.pt", SigLIP(cfg).eval(), tok, "bicubic")
    write_images(work / "photos", images, 0, seed=1)
    embed(work)
    return work / "m.pt"


def embed(work: Path) -> None:
    cmd = [sys.executable, "-m", "siglip", "embed", str(work / "photos"), "--out", str(work / "photos.index")]
    cmd += ["--model", str(work / "m.pt"), "--workers", "0"]
    subprocess.run(cmd, env=child_env(), check=True, capture_output=True)


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


# --- the server and what /proc says about it ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(work: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "siglip", "serve", "--model", str(work / "m.pt"), "--port", str(port)]
    cmd += ["--index", f"photos={work / 'photos.index'}", "--log-level", "warning", "--max-body", "1MB"]
    log = open(work / "server.log", "wb")  # noqa: SIM115 - the child writes it until it exits
    proc = subprocess.Popen(cmd, env={**child_env(), "SIGLIP_API_KEY": KEY}, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"siglip serve exited: {(work / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError("siglip serve did not answer /health in 120 s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- the traffic ---


class Tally:
    """Status codes per case; latencies of the valid requests; the hits' thumbnail URLs and row ids."""

    def __init__(self):
        self.codes: dict[str, Counter] = defaultdict(Counter)
        self.latency: list[float] = []
        self.thumbs: list[str] = []
        self.ids: list[int] = []
        self.dropped = 0  # valid requests whose connection broke
        self.peak = [0.0, 0]  # the server's highest RSS (MiB) and open fds, sampled

    def valid(self, case: str, r: httpx.Response, took: float, ok: tuple = (200,)) -> None:
        self.codes[case][r.status_code] += 1
        if r.status_code in ok:
            self.latency.append(took)

    @property
    def server_errors(self) -> int:
        return sum(n for c in self.codes.values() for code, n in c.items() if isinstance(code, int) and code >= 500)


def valid_request(rng: random.Random, images: list[str]) -> tuple[str, str, str, dict | None]:
    """(case, method, path, JSON body) of one valid request."""
    text = " ".join(rng.choices(WORDS, k=6))
    vec = [rng.gauss(0, 1) for _ in range(DIM)]
    return rng.choice(
        [
            ("embed texts", "POST", "/v1/embeddings", {"input": [text, text[::-1]]}),
            ("embed image", "POST", "/v1/embeddings", {"input": [rng.choice(images)]}),
            ("search text", "POST", "/v1/search", {"text": text, "k": 10}),
            ("search vector", "POST", "/v1/search", {"vector": vec, "k": 20}),
            ("knn-service", "POST", "/knn-service", {"text": text, "indice_name": "photos", "num_images": 8}),
        ]
    )


async def valid_client(client: httpx.AsyncClient, tally: Tally, stop: float, seed: int, images: list[str]) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop:
        t = time.perf_counter()
        if tally.thumbs and rng.random() < 0.2:
            case, method, path, body = "thumbnail", "GET", rng.choice(tally.thumbs[-50:]), None
        elif tally.ids and rng.random() < 0.1:
            ids = rng.sample(tally.ids[-50:], min(5, len(tally.ids[-50:])))
            case, method, path, body = "metadata", "POST", "/metadata", {"ids": ids, "indice_name": "photos"}
        else:
            case, method, path, body = valid_request(rng, images)
        try:
            r = await client.request(method, path, json=body)
        except httpx.HTTPError as e:  # a dropped connection: counted against the server, like a 5xx
            tally.codes[case][type(e).__name__] += 1
            tally.dropped += 1
            continue
        tally.valid(case, r, time.perf_counter() - t, ok=(200, 410) if case == "thumbnail" else (200,))
        if r.status_code == 200 and case == "search text":
            tally.thumbs += [h["thumbnail"] for h in r.json()["hits"]]
            tally.ids += [h["row"] for h in r.json()["hits"]]


def hostile_requests(rng: random.Random, images: list[str]) -> list[tuple[str, str, str, bytes]]:
    """(case, method, path, body bytes) of the hostile requests of issue 31 and a few classics."""
    garbage = "data:image/png;base64," + base64.b64encode(b"\x89PNG not really" * 50).decode()
    zeros = [0.0] * (DIM - 1)
    out = [
        ("garbage image among good", "POST", "/v1/classify", {"images": images[:6] + [garbage], "labels": ["a", "b"]}),
        ("lone surrogate", "POST", "/v1/embeddings", '{"input": ["a \\ud800"]}'),
        ("1e39 vector", "POST", "/v1/search", {"vector": [1e39] + zeros, "k": 5}),
        ("1e-46 vector", "POST", "/v1/search", {"vector": [1e-46] * DIM, "k": 5}),
        ("1e39 knn embedding", "POST", "/knn-service", {"embedding_input": [1e39] + zeros, "indice_name": "photos"}),
        ("huge k", "POST", "/v1/search", {"text": "a cat", "k": 10**12}),
        ("unknown method", f"XMETHOD{rng.randrange(10**6)}", "/v1/search", None),
        ("broken JSON", "POST", "/v1/search", '{"text": "a cat", "k": '),
        ("body over --max-body", "POST", "/v1/embeddings", {"input": ["x" * (2 << 20)]}),
        ("forged thumbnail sig", "GET", "/items/photos/0/thumbnail?sig=00&g=1-0&exp=99999999999", None),
        ("metadata bad ids", "POST", "/metadata", {"ids": [-1, 10**9, "x"], "indice_name": "photos"}),
    ]
    return [(c, m, p, b if b is None or isinstance(b, str) else json.dumps(b)) for c, m, p, b in out]


async def hostile_client(
    client: httpx.AsyncClient, tally: Tally, stop: float, seed: int, images: list[str], skip: list[str]
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop:
        case, method, path, body = rng.choice([h for h in hostile_requests(rng, images) if h[0] not in skip])
        try:
            r = await client.request(method, path, content=body)
            tally.codes[case][r.status_code] += 1
        except httpx.HTTPError as e:  # the server may close a connection on a hostile request: not a 5xx
            tally.codes[case][type(e).__name__] += 1
        await asyncio.sleep(0.01)


async def slow_client(port: int, tally: Tally, stop: float, byte_every_s: float) -> None:
    """A request sent one byte every `byte_every_s` seconds, again and again until `stop`."""
    req = b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode()
    req += b'\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\r\n{"input": "a cat"}'
    while time.monotonic() < stop:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        outcome = "unfinished at the end"
        try:
            for i in range(len(req)):
                if time.monotonic() >= stop:
                    break
                writer.write(req[i : i + 1])
                await writer.drain()
                await asyncio.sleep(byte_every_s)
                if reader.at_eof():
                    outcome = "closed by the server"
                    break
            else:
                line = await asyncio.wait_for(reader.readline(), max(1.0, stop - time.monotonic()))
                outcome = line.decode(errors="replace").split(" ")[1] if line else "closed by the server"
        except (ConnectionError, asyncio.TimeoutError) as e:
            outcome = type(e).__name__
        finally:
            writer.close()
        tally.codes["slow client (a byte at a time)"][outcome] += 1


DIM = 0  # the model's embedding width, read from /health before the traffic starts


async def append_midway(work: Path, client: httpx.AsyncClient, at: float, n: int) -> dict:
    """At `at` (monotonic): `siglip embed` appends n images; then how long until the server shows them."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    before = (await client.get("/health")).json()["indexes"]["photos"]["count"]
    write_images(work / "photos", n, before, seed=2)
    t = time.monotonic()
    await asyncio.to_thread(embed, work)
    embedded = time.monotonic() - t
    done = time.monotonic()
    for _ in range(600):
        r = await client.post("/v1/search", json={"vector": [1.0] + [0.0] * (DIM - 1), "k": before + n})
        if r.status_code == 200 and len(r.json()["hits"]) == before + n:
            seen = time.monotonic() - done
            return {"rows_before": before, "rows_after": before + n, "embed_s": embedded, "seen_after_s": seen}
        await asyncio.sleep(0.1)
    return {"rows_before": before, "rows_after": None, "embed_s": embedded, "seen_after_s": None}


async def sample(pid: int, tally: Tally, stop: float) -> None:
    """The server's highest RSS and fd count, once a second."""
    while time.monotonic() < stop:
        tally.peak = [max(tally.peak[0], rss_mb(pid)), max(tally.peak[1], open_fds(pid))]
        await asyncio.sleep(1.0)


async def soak(args: argparse.Namespace, work: Path, pid: int, port: int, images: list[str]) -> tuple[Tally, dict]:
    tally = Tally()
    stop = time.monotonic() + args.seconds
    # idle connections are dropped before uvicorn's 5 s keep-alive would close them under a request in flight
    limits = httpx.Limits(max_connections=args.clients + args.hostile + 4, keepalive_expiry=2.0)
    opts = dict(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    async with httpx.AsyncClient(limits=limits, **opts) as good, httpx.AsyncClient(limits=limits, **opts) as bad:
        jobs = [valid_client(good, tally, stop, i, images) for i in range(args.clients)]
        jobs += [hostile_client(bad, tally, stop, 1000 + i, images, args.skip) for i in range(args.hostile)]
        jobs += [slow_client(port, tally, stop, args.byte_every) for _ in range(args.slow)]
        jobs.append(sample(pid, tally, stop))
        at = time.monotonic() + args.seconds * args.append_at
        append = asyncio.create_task(append_midway(work, good, at, args.append))
        await asyncio.gather(*jobs)
        return tally, await append


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=180, help="how long the traffic runs (default 180)")
    p.add_argument("--clients", type=int, default=8, help="closed-loop clients sending valid requests")
    p.add_argument("--hostile", type=int, default=2, help="clients sending hostile requests")
    p.add_argument("--slow", type=int, default=16, help="clients sending a byte at a time")
    p.add_argument("--byte-every", type=float, default=0.2, help="seconds between a slow client's bytes")
    p.add_argument("--images", type=int, default=64, help="images in the index at the start")
    p.add_argument("--append", type=int, default=32, help="images appended during the run")
    p.add_argument("--append-at", type=float, default=0.3, help="when the append starts, as a fraction of --seconds")
    p.add_argument(
        "--skip", action="append", default=[], metavar="CASE", help='leave out a hostile case ("lone surrogate")'
    )
    p.add_argument("--variant", default="mu/4")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument(
        "--workdir", default="", help="where the model, images, index and server log go (default: a temp dir)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return p.parse_args()


def report(tally: Tally, append: dict, start: dict, end: dict, seconds: float) -> dict:
    lat = sorted(tally.latency)
    valid_cases = ("embed texts", "embed image", "search text", "search vector", "knn-service", "metadata", "thumbnail")
    return {
        "seconds": seconds,
        "server_errors_5xx": tally.server_errors,
        "valid_answered": len(lat),
        "valid_dropped": tally.dropped,
        "valid_sent": sum(sum(tally.codes[c].values()) for c in valid_cases),
        "p50_ms": 1000 * statistics.median(lat) if lat else None,
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
        "rss_mb": [start["rss"], end["rss"]],
        "open_fds": [start["fds"], end["fds"]],
        "peak_rss_mb": tally.peak[0],
        "peak_open_fds": tally.peak[1],
        "append": append,
        "cases": {case: {str(k): v for k, v in sorted(c.items(), key=str)} for case, c in sorted(tally.codes.items())},
        "load_average": os.getloadavg()[0],
    }


def print_report(out: dict) -> None:
    for case, codes in out["cases"].items():
        print(f"  {case:32s} " + ", ".join(f"{k}: {v}" for k, v in codes.items()))
    a = out["append"]
    print(f"5xx: {out['server_errors_5xx']} (must be 0)")
    print(
        f"valid requests answered: {out['valid_answered']} of {out['valid_sent']} in {out['seconds']:.0f} s "
        f"({out['valid_dropped']} dropped connections)"
    )
    print(f"valid latency: p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms")
    rss, fds = out["rss_mb"], out["open_fds"]
    print(f"RSS: {rss[0]:.0f} MiB at the start, {rss[1]:.0f} MiB at the end (highest {out['peak_rss_mb']:.0f})")
    print(f"open fds: {fds[0]} at the start, {fds[1]} at the end (highest {out['peak_open_fds']})")
    seen = "never" if a["seen_after_s"] is None else f"{a['seen_after_s']:.2f} s after it finished"
    print(
        f"append during the traffic: {a['rows_before']} -> {a['rows_after']} rows (siglip embed {a['embed_s']:.1f} s; served {seen})"
    )
    print(f"load average: {out['load_average']:.1f}")


def main() -> int:
    global DIM
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"preparing a {args.variant} model and an index of {args.images} images in {work} ...", flush=True)
        prepare(work, args.images, args.variant, args.image_size)
        port = free_port()
        proc = start_server(work, port)
        try:
            DIM = httpx.get(f"http://127.0.0.1:{port}/health", headers={"Authorization": f"Bearer {KEY}"}).json()["dim"]
            images = [
                "data:image/png;base64," + base64.b64encode(png((i * 40 % 256, 80, 160))).decode() for i in range(8)
            ]
            start = {"rss": rss_mb(proc.pid), "fds": open_fds(proc.pid)}
            print(f"soaking for {args.seconds:.0f} s on 127.0.0.1:{port} ...", flush=True)
            tally, append = asyncio.run(soak(args, work, proc.pid, port, images))
            time.sleep(1.0)  # connections the clients closed are released
            end = {"rss": rss_mb(proc.pid), "fds": open_fds(proc.pid)}
        finally:
            proc.terminate()
            proc.wait(60)
        out = report(tally, append, start, end, args.seconds)
        print(json.dumps(out)) if args.json else print_report(out)
        if out["server_errors_5xx"]:
            print("server log (last lines):\n" + (work / "server.log").read_text()[-3000:], file=sys.stderr)
        return 1 if out["server_errors_5xx"] else 0


if __name__ == "__main__":
    sys.exit(main())
