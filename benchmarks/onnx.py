"""Embedding throughput of the ONNX export under onnxruntime (fp32 and dynamic int8) against our packed
torch path (siglip.inference) in fp32 and bf16: the same random B/16 weights, in one run.

    python benchmarks/onnx.py                          # B/16-224, batch 8, CPU: ~10 min on 2 cores
    python benchmarks/onnx.py --depth 2 --repeats 3    # B/16 widths, 2 blocks: a quick look

The model is exported with `siglip.interop.onnx.to_onnx` (what `siglip convert --to onnx` runs),
once as fp32 and once with `--quantize int8`; the exports' embeddings are checked against ours
before anything is timed (fp32: max abs difference; int8: the mean cosine to ours). Each repeat
times every path once, in rotated order, on one batch of images and one of texts; the table shows
medians and the ratios to our fp32 path. onnxruntime gets as many threads as torch
(torch.get_num_threads()). bf16 is autocast on the CPU: packed where this CPU has oneDNN bf16
kernels (AVX-512 bf16 / AMX), else the module itself runs, slowly.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent  # this file is onnx.py: its folder must not hide the onnx package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from siglip import inference  # noqa: E402
from siglip.checkpoint import model_payload  # noqa: E402
from siglip.config import ModelConfig  # noqa: E402
from siglip.interop.onnx import to_onnx  # noqa: E402
from siglip.model import SigLIP  # noqa: E402
from siglip.tokenizer import Tokenizer  # noqa: E402

PATHS = ("torch fp32", "torch bf16", "onnxruntime fp32", "onnxruntime int8")


def build(size: str, depth: int) -> tuple[SigLIP, Tokenizer]:
    cfg = ModelConfig.from_variant(size, image_size=224, text_length=64, vocab_size=32000)
    if depth:
        cfg.image.depth = cfg.text.depth = depth
    torch.manual_seed(0)
    words = "a photo of the cat dog bird plane car ship red blue small big one two three".split()
    tok = Tokenizer.train([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 20, vocab_size=60, length=64)
    return SigLIP(cfg).eval(), tok


def sessions(folder: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    load = lambda name: ort.InferenceSession(str(folder / name), opts, providers=["CPUExecutionProvider"])
    return load("image.onnx"), load("text.onnx")


def path_fns(model: SigLIP, onnx: dict, pixels: torch.Tensor, ids: torch.Tensor) -> dict:
    """name -> (image fn, text fn), each returning (n, d) unit rows as float32."""

    def torch_fn(encode, x, bf16):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return encode(model, x).float()

        return run

    def ort_fn(session, name, x):
        feed = {name: np.ascontiguousarray(x.numpy())}
        return lambda: torch.from_numpy(session.run(None, feed)[0])

    out = {
        "torch fp32": (torch_fn(inference.encode_image, pixels, False), torch_fn(inference.encode_text, ids, False)),
        "torch bf16": (torch_fn(inference.encode_image, pixels, True), torch_fn(inference.encode_text, ids, True)),
    }
    for precision, (image, text) in onnx.items():
        out[f"onnxruntime {precision}"] = (ort_fn(image, "pixels", pixels), ort_fn(text, "ids", ids))
    return out


def check(fns: dict) -> list[str]:
    """The exports' outputs against ours before timing: fp32 max abs, int8 and bf16 mean cosine."""
    lines = []
    for kind, i in (("image", 0), ("text", 1)):
        ref = fns["torch fp32"][i]()
        diff = (fns["onnxruntime fp32"][i]() - ref).abs().max().item()
        cos = {n: (fns[n][i]() * ref).sum(-1).mean().item() for n in ("onnxruntime int8", "torch bf16")}
        lines.append(f"{kind}: onnxruntime fp32 max_abs_diff={diff:.2e}; mean cosine to torch fp32: "
                     + ", ".join(f"{n} {c:.5f}" for n, c in cos.items()))  # fmt: skip
        if diff > 1e-4:
            raise SystemExit(f"onnxruntime fp32 {kind} embeddings differ from ours by {diff:.2e}: not timing")
    return lines


def timed(fn, steps: int) -> float:
    fn()  # warm-up: packing, session arenas
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="B/16")
    p.add_argument("--depth", type=int, default=0, help="blocks per tower (0: the size's own)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=1, help="calls per timing")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    model, tok = build(args.size, args.depth)
    payload = model_payload(model, tok, "bicubic")
    onnx = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "int8"):
            t0 = time.perf_counter()
            to_onnx(payload, Path(tmp) / precision, quantize="" if precision == "fp32" else "int8")
            mb = sum(f.stat().st_size for f in (Path(tmp) / precision).glob("*.onnx*")) / 2**20
            print(f"export {precision}: {time.perf_counter() - t0:.0f} s, {mb:.0f} MiB", file=sys.stderr)
            onnx[precision] = sessions(Path(tmp) / precision, threads)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(args.batch_size, 3, 224, 224, generator=g) * 2 - 1
    ids = torch.randint(0, 32000, (args.batch_size, 64), generator=g)
    fns = path_fns(model, onnx, pixels, ids)
    checks = check(fns)
    times = {(n, k): [] for n in PATHS for k in ("image", "text")}
    for r in range(args.repeats):
        order = PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]  # rotated: drifts hit every path alike
        for name in order:
            for kind, i in (("image", 0), ("text", 1)):
                times[name, kind].append(timed(fns[name][i], args.steps))
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)
    print(f"size={args.size} depth={args.depth or 'full'} batch_size={args.batch_size} repeats={args.repeats} "
          f"threads={threads} loadavg={' '.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
    for line in checks:
        print(line)
    print(f"{'task':6} {'path':18} {'unit':8} {'median':>9} {'vs torch fp32':>14}")
    for kind, unit in (("image", "img/s"), ("text", "texts/s")):
        base = args.batch_size / statistics.median(times["torch fp32", kind])
        for name in PATHS:
            rate = args.batch_size / statistics.median(times[name, kind])
            print(f"{kind:6} {name:18} {unit:8} {rate:9.3f} {rate / base:13.2f}x")


if __name__ == "__main__":
    main()
