"""Peak memory and time of the sigmoid loss, forward plus backward, ours vs open_clip's SigLipLoss.

    PYTHONPATH=. python benchmarks/loss_memory.py                      # n = 4096, 16384
    PYTHONPATH=. python benchmarks/loss_memory.py --large              # adds n = 32768 (open_clip ~20 GB)
    PYTHONPATH=. python benchmarks/loss_memory.py --sizes 4096 --ours-only-sizes 131072

Each (implementation, n) runs in its own process, so one's memory cannot hide in another's. In a
process: unit-norm fp32 inputs (n, d) requiring gradients, one warm-up call at n = 256, then the
peak-memory mark is reset (Linux /proc/self/clear_refs) and one forward + backward is measured.
"extra" = peak resident memory during the call minus resident memory before it: logits, buffers and
the gradients of zimg and ztxt (each n * d * 4 bytes) count, the inputs do not. Expect for ours at
n = 16384: about 1/20 or less of open_clip's memory; time a little under open_clip's (both do the
same three n x n x d matrix products; open_clip adds several passes over (n, n) matrices).
open_clip is a benchmark-only dependency; without it only ours runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current resident size (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(impl: str, n: int, d: int, threads: int) -> None:
    """Measure one implementation at one size; prints one JSON line."""
    import torch

    torch.set_num_threads(threads)
    if impl == "open_clip":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from open_clip.loss import SigLipLoss

        siglip_loss = SigLipLoss()

        def loss_fn(zimg, ztxt, t, b):
            return siglip_loss(zimg, ztxt, t, b)  # logit_scale is t itself (already exp'd)
    else:
        from siglip.loss import sigmoid_loss as loss_fn

    def inputs(m: int):
        g = torch.Generator().manual_seed(0)
        zimg = torch.randn(m, d, generator=g)
        zimg /= zimg.norm(dim=1, keepdim=True)
        ztxt = torch.randn(m, d, generator=g)
        ztxt /= ztxt.norm(dim=1, keepdim=True)
        t = torch.tensor(10.0, requires_grad=True)
        b = torch.tensor(-10.0, requires_grad=True)
        return zimg.requires_grad_(), ztxt.requires_grad_(), t, b

    loss_fn(*inputs(256)).backward()  # warm-up: lazy initialisation, allocator pools
    zimg, ztxt, t, b = inputs(n)
    exact = _reset_peak()
    before = _rss_kib("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    loss = loss_fn(zimg, ztxt, t, b)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if not exact:  # ru_maxrss is a high-water mark since process start: only valid if exceeded
        peak = max(peak, maxrss_before)
    print(
        json.dumps(
            {
                "impl": impl,
                "n": n,
                "d": d,
                "seconds": round(seconds, 2),
                "extra_mib": round((peak - before) / 1024, 1),
                "loss": round(loss.item(), 5),
                "peak_exact": exact,
            }
        )
    )


def run_child(impl: str, n: int, args) -> dict | None:
    cmd = [sys.executable, __file__, "--child", impl, "--n", str(n), "--d", str(args.d), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        print(f"{impl:>9}  n={n:>6}  FAILED: {tail[0]}", flush=True)
        return None
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"{impl:>9}  n={n:>6}  d={args.d}  time {res['seconds']:8.2f} s  extra memory {res['extra_mib']:9.1f} MiB  loss {res['loss']:.5f}",
        flush=True,
    )
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384], help="n for both implementations")
    p.add_argument("--large", action="store_true", help="also n = 32768 for both (open_clip needs ~20 GB)")
    p.add_argument("--ours-only-sizes", type=int, nargs="*", default=[], help="n for ours alone, e.g. 131072")
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", choices=["open_clip", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.n, args.d, args.threads)
        return
    try:
        import open_clip  # noqa: F401

        impls = ["open_clip", "ours"]
    except ImportError:
        print("open_clip is not installed: measuring ours only")
        impls = ["ours"]
    sizes = args.sizes + ([32768] if args.large and 32768 not in args.sizes else [])
    for n in sizes:
        res = {impl: run_child(impl, n, args) for impl in impls}
        if res.get("open_clip") and res.get("ours"):
            oc, us = res["open_clip"], res["ours"]
            print(
                f"    ratio ours/open_clip at n={n}: time {us['seconds'] / oc['seconds']:.2f}x, "
                f"extra memory {us['extra_mib'] / max(oc['extra_mib'], 1e-9):.4f}x (1/{oc['extra_mib'] / max(us['extra_mib'], 1e-9):.0f})",
                flush=True,
            )
    for n in args.ours_only_sizes:
        run_child("ours", n, args)


if __name__ == "__main__":
    main()
