"""The GPU benchmark: B/16 training and embedding throughput with MFU against transformers and open_clip,
and the sigmoid loss at n = 65,536 in bf16 against open_clip and the published siglip-kernel figure.

    python benchmarks/gpu.py                          # one CUDA GPU: ~5 min
    python benchmarks/gpu.py --batch-size 256 --compile --peak-tflops 989
    python benchmarks/gpu.py --skip-throughput --loss-n 65536 131072

Part 1 runs benchmarks/throughput.py on the GPU (its own process; same table: pairs/s, img/s,
texts/s, ratios ours/peer, MFU). Part 2 times one forward + backward of the loss on unit-norm bf16
embeddings (n, 768) with CUDA events (median of --repeats after a warm-up) and reports the peak
memory allocated beyond the inputs (torch.cuda.max_memory_allocated): ours (tiles of 2048, never
the n x n matrix) and open_clip's SigLipLoss (the dense n x n logits; "OOM" when it does not fit).
The reference line is the figure published for the siglip-kernel fused CUDA loss on an H100:
48.8 ms and 1.4 GB at n = 65,536 (bf16). Needs a CUDA GPU; on a CPU use benchmarks/throughput.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

PUBLISHED = {"n": 65536, "ms": 48.8, "gb": 1.4, "what": "siglip-kernel (published, H100, bf16)"}


def loss_fns() -> dict:
    from siglip.loss import sigmoid_loss

    fns = {"ours": sigmoid_loss}
    try:
        from open_clip.loss import SigLipLoss

        fns["open_clip"] = SigLipLoss()  # takes t itself (logit_scale already exp'd), as ours
    except ImportError:
        print("open_clip is not installed: its loss is left out (pip install -e '.[peers]')", file=sys.stderr)
    return fns


def time_loss(fn, n: int, d: int, repeats: int) -> dict:
    """Median ms of forward + backward and the peak GB allocated beyond the inputs."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    unit = lambda: torch.nn.functional.normalize(torch.randn(n, d, device=dev, generator=g), dim=-1)
    inputs = [unit().to(torch.bfloat16), unit().to(torch.bfloat16), torch.tensor(10.0, device=dev)]
    inputs = [x.requires_grad_() for x in (*inputs, torch.tensor(-10.0, device=dev))]  # zimg, ztxt, t, b

    def call():
        for x in inputs:
            x.grad = None
        fn(*inputs).backward()

    try:
        call()  # warm-up: kernels, allocator
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        return {"ms": statistics.median(times), "gb": peak}
    except torch.cuda.OutOfMemoryError:
        return {"ms": None, "gb": None, "oom": True}
    finally:
        inputs.clear()
        torch.cuda.empty_cache()


def loss_table(sizes: list[int], d: int, repeats: int) -> list[dict]:
    rows = []
    fns = loss_fns()
    for n in sizes:
        for name, fn in fns.items():
            rows.append({"n": n, "loss": name, **time_loss(fn, n, d, repeats)})
        if n == PUBLISHED["n"]:
            rows.append({"n": n, "loss": PUBLISHED["what"], "ms": PUBLISHED["ms"], "gb": PUBLISHED["gb"]})
    return rows


def print_loss_table(rows: list[dict]) -> None:
    print(f"\n{'n':>8}  {'loss (fwd + bwd, bf16 inputs, d=768)':<40}{'ms':>10}{'extra GB':>10}{'ms vs ours':>12}")
    ours = {r["n"]: r for r in rows if r["loss"] == "ours"}
    for r in rows:
        if r.get("oom"):
            print(f"{r['n']:>8}  {r['loss']:<40}{'OOM':>10}{'OOM':>10}")
            continue
        ratio = r["ms"] / ours[r["n"]]["ms"] if ours[r["n"]].get("ms") else float("nan")
        print(f"{r['n']:>8}  {r['loss']:<40}{r['ms']:>10.1f}{r['gb']:>10.2f}{ratio:>11.2f}x")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python benchmarks/gpu.py --batch-size 128 --repeats 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--size", default="B/16")
    p.add_argument("--batch-size", type=int, default=128, help="training / embedding batch (part 1)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="calls per timing (part 1)")
    p.add_argument("--compile", action="store_true", help="torch.compile all three models (part 1)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="matmul peak for MFU (0 = measure once, cached)")
    p.add_argument("--loss-n", type=int, nargs="+", default=[16384, 65536], help="global batch sizes (part 2)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--json", action="store_true", help="part 2 as JSON (part 1 prints its table)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit(
            "benchmarks/gpu.py needs a CUDA GPU and torch sees none (torch.cuda.is_available() is False). "
            "On a CPU run benchmarks/throughput.py."
        )
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    if not args.skip_throughput:
        cmd = [sys.executable, str(REPO / "benchmarks/throughput.py"), "--device", "cuda", "--size", args.size]
        cmd += ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats), "--steps", str(args.steps)]
        cmd += ["--peak-tflops", str(args.peak_tflops)] + (["--compile"] if args.compile else [])
        done = subprocess.run(cmd, cwd=REPO)
        if done.returncode:
            raise SystemExit(f"throughput.py failed (exit {done.returncode})")
    rows = loss_table(args.loss_n, 768, args.repeats)
    print(json.dumps(rows, indent=1) if args.json else "", end="")
    if not args.json:
        print_loss_table(rows)


if __name__ == "__main__":
    main()
