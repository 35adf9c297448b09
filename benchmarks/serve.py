"""`siglip serve` under load: 1, 8, 32 and 128 concurrent clients embedding texts and images through
the OpenAI embeddings route, with dynamic batching on (--max-batch 32) and off (--max-batch 1), and
infinity-emb serving the same weights (our `siglip convert --to hf` export), all in the same run.

    python benchmarks/serve.py                                   # B/16, random weights, 10 s a cell
    python benchmarks/serve.py --variant mu/4 --image-size 32 --seconds 3 --no-infinity   # a quick look
    python benchmarks/serve.py --infinity /work/infinity-venv/bin/infinity_emb --json

    -> a line per cell (with siglip's mean batch), a table of requests/s, p50 and p99 per modality
       and client count, batching / one-at-a-time and siglip / infinity; the model alone (measured
       first); issue 31's targets: at 32 clients batching server / model alone on batches >= 0.85x,
       one client batching / --max-batch 1 >= 0.95x, images at 32 clients siglip / infinity >= 1.0x.

Each client sends one input per request and the next as soon as the answer is in (a closed loop).
A cell runs `--seconds`, then lets the requests in flight finish: requests/s = answers / (last answer
- first request). The three servers run side by side and the cells alternate between them, so a busy
neighbour slows all three alike; each server gets `--threads` intra-op threads. infinity-emb pins its
own torch and transformers: install it in its own virtual environment (docs/serve-benchmark.md) and
pass its `infinity_emb` with --infinity; where it cannot start, the table says why and leaves its
columns out. The model (random weights), its HF export and the images are written once under --workdir.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

logging.getLogger("httpx").setLevel(logging.WARNING)  # siglip's CLI logging would print every request

REPO = Path(__file__).resolve().parents[1]
CLIENTS = (1, 8, 32, 128)
WORDS = "a the photo of red blue green small big dog cat car house tree beach street night two three on in".split()


# --- the model, its export and the inputs ---


def prepare(workdir: Path, variant: str, image_size: int) -> tuple[Path, Path]:
    """A random-weight model (ours, .pt) and its `siglip convert --to hf` folder; made once."""
    tag = f"{variant.replace('/', '')}-{image_size}"
    ours, hf = workdir / f"{tag}.pt", workdir / f"{tag}-hf"
    if ours.is_file() and (hf / "model.safetensors").is_file():
        return ours, hf
    import torch

    import siglip
    from siglip.cli import main as cli
    from siglip.config import ModelConfig
    from siglip.model import SigLIP
    from siglip.tokenizer import Tokenizer

    print(f"writing a random {variant} model to {ours} and its Hugging Face export ...", flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    tok = Tokenizer.train([" ".join(rng.choices(WORDS, k=8)) for _ in range(2000)], vocab_size=200, length=64)
    torch.manual_seed(0)
    cfg = ModelConfig.from_variant(variant, image_size=image_size, text_length=64, vocab_size=32000)
    siglip.save_model(ours, SigLIP(cfg).eval(), tok, "bicubic")
    assert cli(["convert", str(ours), str(hf), "--to", "hf"]) == 0
    return ours, hf


def inputs(n: int = 64) -> dict[str, list[str]]:
    """n different texts (about 10 words) and n different 320 x 240 JPEGs as data: URLs."""
    from PIL import Image, ImageDraw

    rng = random.Random(1)
    texts = [" ".join(rng.choices(WORDS, k=10)) for _ in range(n)]
    images = []
    for _ in range(n):
        img = Image.new("RGB", (320, 240), tuple(rng.randrange(256) for _ in range(3)))
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.randrange(280), rng.randrange(200)
            d.ellipse((x, y, x + 40, y + 40), fill=tuple(rng.randrange(256) for _ in range(3)))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        images.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    return {"text": texts, "image": images}


def ceiling(
    ours: Path, texts: list[str], max_batch: int, threads: int, device: str = "cpu", repeats: int = 5
) -> dict[str, dict[str, float]]:
    """The model alone, in this process (no HTTP, no queue), per modality: `items_s` embedding `max_batch`
    inputs a call (a batching server's best), `gain`: that over one input a call (what batching / one-at-
    a-time can exceed only by the per-request work during which one-at-a-time leaves the model idle)."""
    import torch

    import siglip

    torch.set_num_threads(threads)
    model = siglip.load(ours, device=device)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    size = model.model.config.image_size
    calls = {
        "text": lambda n: model.embed_texts(texts[:n], batch_size=n),
        "image": lambda n: model.embed_images(torch.rand(n, 3, size, size), batch_size=n),
    }
    out = {}
    for kind, call in calls.items():
        per_item = {}
        for n in (1, max_batch):
            call(n)  # warm
            times = []
            for _ in range(repeats):
                sync()
                t = time.perf_counter()
                call(n)
                sync()
                times.append((time.perf_counter() - t) / n)
            per_item[n] = statistics.median(times)
        out[kind] = {"gain": per_item[1] / per_item[max_batch], "items_s": 1 / per_item[max_batch]}
    return out


# --- the servers ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """One server process on a free loopback port: `name`, `url`, how to ask it for embeddings."""

    def __init__(self, name: str, cmd: list[str], env: dict, log: Path, body, route: str = "/v1/embeddings"):
        self.name, self.port, self.body, self.route, self.log = name, free_port(), body, route, log
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([*cmd, "--port", str(self.port)], env=env, stdout=out, stderr=out)

    def wait(self, health: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}: {self.log.read_text()[-1500:]}")
            try:
                if httpx.get(self.url + health, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"no answer on {health} in {timeout:.0f} s: {self.log.read_text()[-1500:]}")

    def payload(self, kind: str, x: str) -> bytes:
        return json.dumps(self.body(kind, x)).encode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_servers(args: argparse.Namespace, ours: Path, hf: Path) -> tuple[list[Served], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    siglip_cmd = [sys.executable, "-m", "siglip", "serve", "--model", str(ours), "--log-level", "warning"]
    siglip_cmd += ["--device", args.device]
    ask_ours = lambda kind, x: {"model": "siglip", "input": x}  # noqa: E731 - a data: URL embeds as an image
    servers = [
        Served(
            "batching", [*siglip_cmd, "--max-batch", str(args.max_batch)], env, args.workdir / "batching.log", ask_ours
        ),
        Served("one-at-a-time", [*siglip_cmd, "--max-batch", "1"], env, args.workdir / "single.log", ask_ours),
    ]
    why_not = "not asked for (--no-infinity)"
    if not args.no_infinity:
        why_not = ""
        inf_env = {**env, "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "TRANSFORMERS_OFFLINE": "1"}
        inf_env.pop("PYTHONPATH")
        cmd = [args.infinity, "v2", "--model-id", str(hf), "--engine", "torch", "--device", args.device]
        cmd += ["--batch-size", str(args.max_batch), "--served-model-name", "siglip"]

        def ask_infinity(kind, x):
            return {"model": "siglip", "input": [x]} | ({"modality": "image"} if kind == "image" else {})

        try:
            servers.append(Served("infinity", cmd, inf_env, args.workdir / "infinity.log", ask_infinity, "/embeddings"))
        except OSError as e:
            why_not = f"{args.infinity}: {e.strerror} (install it as the docstring says)"
    up = []
    for s in servers:
        try:
            s.wait("/health", args.start_timeout)
            up.append(s)
        except RuntimeError as e:
            if s.name != "infinity":
                raise
            why_not = f"infinity-emb did not start: {e}"
            s.stop()
    return up, why_not


# --- load ---


def batched(server: Served, kind: str) -> tuple[float, float]:
    """(inputs, model calls) so far, from a siglip server's /metrics (infinity: (0, 0))."""
    text = httpx.get(server.url + "/metrics", timeout=30).text if server.name != "infinity" else ""
    got = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("siglip_batch_size_"))
    return tuple(float(got.get(f'siglip_batch_size_{x}{{kind="{kind}"}}', 0)) for x in ("sum", "count"))


async def cell(server: Served, kind: str, pool: list[str], clients: int, seconds: float) -> dict:
    """`clients` closed-loop clients for `seconds`, then the requests in flight finish."""
    before = batched(server, kind)
    bodies = [server.payload(kind, x) for x in pool]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    headers = {"Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=600) as client:
        start = time.perf_counter()
        deadline, last = start + seconds, start

        async def one(i: int) -> None:
            nonlocal last
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                r = await client.post(server.route, content=bodies[i % len(bodies)], headers=headers)
                last = time.perf_counter()
                if r.status_code == 200:
                    latencies.append(last - t)
                else:
                    key = f"{r.status_code}: {r.text[:120]}"
                    errors[key] = errors.get(key, 0) + 1
                i += clients

        await asyncio.gather(*(one(i) for i in range(clients)))
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    inputs, calls = (a - b for a, b in zip(batched(server, kind), before))
    return {
        "batch": inputs / calls if calls else float("nan"),
        "server": server.name,
        "modality": kind,
        "clients": clients,
        "requests": len(latencies),
        "rps": len(latencies) / (last - start),
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * q[98] if latencies else float("nan"),
        "errors": errors,
    }


def warm_up(servers: list[Served], data: dict[str, list[str]], kinds: list[str], max_batch: int) -> None:
    """A moment of each modality with 1 and max-batch clients: first-call costs stay out of the cells."""
    for s in servers:
        for kind in kinds:
            for c in (1, max_batch):
                asyncio.run(cell(s, kind, data[kind], c, 0.5))


def agreement(servers: list[Served], data: dict[str, list[str]]) -> dict[str, float]:
    """Cosine between infinity's and our embedding of the same text and the same image."""
    by = {s.name: s for s in servers}
    out = {}
    for kind in ("text", "image"):
        vec = []
        for name in ("batching", "infinity"):
            s = by[name]
            r = httpx.post(s.url + s.route, content=s.payload(kind, data[kind][0]), timeout=120,
                           headers={"Content-Type": "application/json"})  # fmt: skip
            r.raise_for_status()
            vec.append(r.json()["data"][0]["embedding"])
        dot = sum(a * b for a, b in zip(*vec))
        norms = [sum(a * a for a in v) ** 0.5 for v in vec]
        out[kind] = dot / (norms[0] * norms[1])
    return out


# --- report ---


def table(results: list[dict], names: list[str]) -> str:
    head = "modality clients | " + " | ".join(f"{n:>22}" for n in names) + " | batch/single"
    head += " | siglip/infinity" if "infinity" in names else ""
    sub = "                 | " + " | ".join(f"{'req/s':>6} {'p50 ms':>7} {'p99 ms':>7}" for _ in names)
    lines = [head, sub]
    for kind in ("text", "image"):
        for c in CLIENTS:
            row = {r["server"]: r for r in results if r["modality"] == kind and r["clients"] == c}
            if not row:
                continue
            cells = [f"{row[n]['rps']:6.1f} {row[n]['p50_ms']:7.0f} {row[n]['p99_ms']:7.0f}" for n in names]
            line = f"{kind:<8} {c:>7} | " + " | ".join(cells)
            line += f" | {row['batching']['rps'] / row['one-at-a-time']['rps']:11.2f}x"
            if "infinity" in row:
                line += f" | {row['batching']['rps'] / row['infinity']['rps']:14.2f}x"
            lines.append(line)
    return "\n".join(lines)


def targets(results: list[dict], bound: dict) -> list[str]:
    """Issue 31's three efficiency ratios, one line each (n/a where a cell was not run)."""
    rps = {(r["server"], r["modality"], r["clients"]): r["rps"] for r in results}
    ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "n/a"  # noqa: E731
    alone = {k: bound.get(k, {}).get("items_s") for k in ("text", "image")}
    lines = [f"target {k:<5} 32 clients, batching server / model alone on batches: "
             f"{ratio(rps.get(('batching', k, 32)), alone[k])} (>= 0.85x)" for k in alone]  # fmt: skip
    lines += [f"target {k:<5} 1 client, batching / --max-batch 1: "
              f"{ratio(rps.get(('batching', k, 1)), rps.get(('one-at-a-time', k, 1)))} (>= 0.95x)" for k in alone]  # fmt: skip
    lines.append(
        f"target image 32 clients, siglip / infinity-emb: "
        f"{ratio(rps.get(('batching', 'image', 32)), rps.get(('infinity', 'image', 32)))} (>= 1.0x)"
    )
    return lines  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="B/16")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each cell before its drain")
    p.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="comma-separated client counts")
    p.add_argument("--modalities", default="text,image")
    p.add_argument("--max-batch", type=int, default=32, help="batch size of the batching server and infinity's")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of each server")
    p.add_argument("--device", default="cpu", help="where every server runs the model: cpu, cuda")
    p.add_argument("--infinity", default="/work/infinity-venv/bin/infinity_emb", help="its infinity_emb command")
    p.add_argument("--no-infinity", action="store_true")
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds a server may take to start")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/siglip_bench_serve"))
    p.add_argument("--json", action="store_true", help="print every cell as one JSON document at the end")
    return p.parse_args()


def report(args: argparse.Namespace, results: list[dict], names: list[str], why_not: str, agree: dict, bound: dict):
    print(f"\n{args.variant} at {args.image_size} px, random weights, {args.device}, {args.threads} threads per server, "
          f"{args.seconds:.0f} s per cell, one input per request, max batch {args.max_batch}")  # fmt: skip
    print(table(results, names))
    print(
        f"the model alone (no server, measured first): one call on {args.max_batch} inputs gives "
        + ", ".join(f"{v['gain']:.2f}x ({k}, {v['items_s']:.1f} items/s)" for k, v in bound.items())
        + " the items/s of one input a call (the model's own gain; the servers' ratio above also holds"
        + " the HTTP, JSON and queue work around each call, on cores the clients share)"
    )
    for line in targets(results, bound):
        print(line)
    if why_not:
        print(f"infinity-emb: {why_not}")
    else:
        print("infinity-emb tokenizes with padding=True (to the longest text of its batch), siglip to the model's")
        print("text length as the model was trained: infinity's text rows differ, and it computes fewer positions")
    for kind, cos in agree.items():
        print(f"same weights: cosine(siglip, infinity) of one {kind} = {cos:.5f}")
    if args.json:
        doc = {"results": results, "infinity": why_not or "ran", "agreement": agree, "ceiling": bound}
        print(json.dumps(doc, indent=1))


def main() -> None:
    args = parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    ours, hf = prepare(args.workdir, args.variant, args.image_size)
    data = inputs()
    print(f"the model alone, batch {args.max_batch} vs batch 1 ...", flush=True)
    bound = ceiling(ours, data["text"], args.max_batch, args.threads, args.device)
    print(f"starting 3 servers on {ours.name} (infinity on {hf.name}) ...", flush=True)
    servers, why_not = start_servers(args, ours, hf)
    results, agree = [], {}
    try:
        agree = agreement(servers, data) if len(servers) == 3 else {}
        print("warming up ...", flush=True)
        warm_up(servers, data, args.modalities.split(","), args.max_batch)
        for kind in args.modalities.split(","):
            for c in clients:
                for s in servers:
                    r = asyncio.run(cell(s, kind, data[kind], c, args.seconds))
                    results.append(r)
                    err = f"  errors {r['errors']}" if r["errors"] else ""
                    print(f"  {s.name:>13} {kind:<5} {c:>3} clients: {r['rps']:6.1f} req/s  p50 {r['p50_ms']:6.0f} ms"
                          f"  p99 {r['p99_ms']:6.0f} ms  ({r['requests']} answers, batch {r['batch']:.1f}){err}", flush=True)  # fmt: skip
    finally:
        for s in servers:
            s.stop()
    report(args, results, [s.name for s in servers], why_not, agree, bound)


if __name__ == "__main__":
    main()
