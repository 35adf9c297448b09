"""Peak memory per process of one training step at a fixed global batch: split over 1, 2 and 4 DDP
processes (gloo, CPU), and in 1, 4 and 16 GradCache micro-batches in one process.

    python benchmarks/train_memory.py            # ~3-5 min on 2 CPU cores
    -> one line per setting: the step's peak memory (RSS above the process's resting level), MiB

Each setting runs in fresh processes, measuring the first step (a second step would reuse memory
the allocator kept). RSS is sampled every millisecond by a thread; glibc is told to return large
blocks to the system at once so that RSS follows what tensors hold.
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from siglip.config import ModelConfig, OptimConfig  # noqa: E402
from siglip.distributed import Runtime, wrap_model  # noqa: E402
from siglip.loss import sigmoid_loss  # noqa: E402
from siglip.model import SigLIP  # noqa: E402
from siglip.optim import build_optimizer  # noqa: E402
from siglip.train.accumulate import forward_backward  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Highest RSS seen while the `with` block runs, sampled every millisecond."""

    def __enter__(self):
        self.start, self.peak, self.running = rss(), rss(), True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss())


def one_step(rank: int, world: int, init: str, args, micro: int, out: str) -> None:
    torch.set_num_threads(1)
    group = None
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
        group = dist.group.WORLD
    rt = Runtime(rank, world, 0, torch.device("cpu"), group)
    torch.manual_seed(0)
    cfg = ModelConfig.from_variant(args.variant, image_size=args.image_size, text_length=16, vocab_size=1000)
    model = SigLIP(cfg)
    forward = wrap_model(model, rt, "ddp")
    optimizer = build_optimizer(model, OptimConfig())
    n = args.batch // world
    g = torch.Generator().manual_seed(rank)
    pixels = torch.rand(n, 3, args.image_size, args.image_size, generator=g) * 2 - 1
    ids = torch.randint(0, 1000, (n, 16), generator=g)
    loss_fn = functools.partial(sigmoid_loss, group=group)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        optimizer.zero_grad(set_to_none=True)
        forward_backward(forward, model, pixels, ids, loss_fn, micro)
        optimizer.step()
    seconds = time.perf_counter() - t0
    Path(out, f"{rank}.txt").write_text(f"{(mem.peak - mem.start) / 2**20} {seconds}")
    if group is not None:
        dist.destroy_process_group()


def measure(world: int, micro: int, args) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            init = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        mp.start_processes(one_step, args=(world, init, args, micro, tmp), nprocs=world, start_method="spawn")
        mib, sec = zip(*(map(float, Path(tmp, f"{r}.txt").read_text().split()) for r in range(world)))
    return max(mib), max(sec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="tiny/8")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    args = parser.parse_args()
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # inherited by the spawned processes
    print(f"model {args.variant} at {args.image_size} px, text 16 tokens, global batch {args.batch}, one AdamW step")
    base = None
    for world, k in [(1, 1), (2, 1), (4, 1), (1, 4), (1, 16)]:
        micro = 0 if k == 1 else args.batch // k
        mib, sec = measure(world, micro, args)
        base = base or mib
        print(
            f"processes={world} micro_batches={k:<2d} per-process batch {args.batch // world:3d}: "
            f"peak step memory {mib:7.1f} MiB ({mib / base:.2f}x of 1 process), step {sec:.2f} s"
        )


if __name__ == "__main__":
    main()
