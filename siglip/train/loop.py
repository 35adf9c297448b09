"""The steps of the training loop: one optimizer step on a batch, the logged record of a step,
resumable checkpoints, and the evaluations due at a step."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from siglip.config import Config, to_dict
from siglip.distributed import (
    Runtime,
    barrier,
    clip_grad_norm,
    common_batch_size,
    full_model_state,
    full_optimizer_state,
    sum_over_ranks,
    sync_replicated_grads,
)
from siglip.eval.evaluators import run_evals
from siglip.flops import mfu, peak_tflops, train_step_flops
from siglip.model import SigLIP
from siglip.optim import step_unless
from siglip.tokenizer import Tokenizer
from siglip.train.accumulate import forward_backward
from siglip.train.guard import DivergenceGuard
from siglip.train.resume import write_checkpoint

log = logging.getLogger(__name__)


class Meter:
    """Pairs trained, their model FLOPs and images skipped since the last logged step, over all
    ranks. MFU (siglip.flops) is against `train.peak_tflops`, or the matmul peak measured by rank 0
    (once per device and dtype, cached). The time between two logged steps is read without a device
    sync of its own: reading the loss at a logged step waits for the device anyway."""

    def __init__(self, rt: Runtime, cfg: Config):
        self.rt, self.model_cfg, self.seen, self.flops, self.skipped = rt, cfg.model, 0, 0, 0
        self.peak = 0.0
        if rt.is_main:
            dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
            self.peak = peak_tflops(rt.device, dtype, cfg.train.peak_tflops)
            log.info("MFU against a matmul peak of %.3g TFLOP/s per device (%s)", self.peak, dtype)
        self.grad_norm: Tensor | None = None  # of the last step, before clipping (when optim.grad_clip > 0)
        self.t_last = time.perf_counter()

    def add(self, n_global: int) -> None:
        """One step on a global batch of `n_global` pairs."""
        self.seen += n_global
        self.flops += train_step_flops(self.model_cfg, n_global)

    def record(self, step: int, loss: Tensor, lr: float, model: SigLIP, skipped: bool = False) -> dict:
        """The metrics.jsonl record of this step (the only place the loss is read to the host);
        `skipped`: the guard skipped this step, so its gradient norm is not logged."""
        now = time.perf_counter()
        out = {
            "step": step,
            "loss": loss.item(),
            "lr": lr,
            "t": model.t.item(),
            "b": model.b.item(),
            "images_per_s": self.seen / (now - self.t_last),
            "skipped": int(sum_over_ranks(self.skipped, self.rt)),
        }
        if self.peak > 0:
            out["mfu"] = mfu(self.flops / self.rt.world_size, 1 / (now - self.t_last), self.peak)
        if self.grad_norm is not None and not skipped:
            out["grad_norm"] = self.grad_norm.item()
        self.seen, self.flops, self.t_last = 0, 0, now
        return out


def train_step(
    batch: dict,
    forward: Callable,
    model: SigLIP,
    compute_loss: Callable,
    optimizer: torch.optim.Optimizer,
    scheduler,
    cfg: Config,
    rt: Runtime,
    autocast: Callable,
    meter: Meter,
    guard: DivergenceGuard | None = None,
) -> Tensor | None:
    """One optimizer step on this rank's share of a global batch; None when no rank has a readable
    image left (the step is not taken). Ranks trim to a common size so their shares stay equal.
    `guard`: a NaN/inf loss or gradient skips the update (counted and logged at the next `guard.poll`;
    the schedule still advances). The step never waits for the device (a GPU runs ahead)."""
    pixels = batch["pixels"]
    n = common_batch_size(0 if pixels is None else pixels.shape[0], rt)
    meter.skipped += batch["skipped"] + (0 if pixels is None else pixels.shape[0] - n)
    if n == 0:
        return None
    pixels = pixels[:n].to(rt.device, non_blocking=True)
    ids = batch["ids"][:n].to(rt.device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    loss = forward_backward(forward, model, pixels, ids, compute_loss, cfg.train.micro_batch_size, autocast)
    sync_replicated_grads(model, forward, rt)  # t' and b under FSDP2
    # nothing below waits for the device: the guard's flag stays there (read at logged steps), the
    # fused AdamW skips a non-finite step itself, and the norm is read only when logged
    found_inf = None if guard is None else guard.observe(loss, model, rt.group)
    meter.grad_norm = clip_grad_norm(model, cfg.optim.grad_clip, rt) if cfg.optim.grad_clip > 0 else None
    step_unless(optimizer, found_inf)
    scheduler.step()
    meter.add(n * rt.world_size)
    return loss


def save_checkpoint(
    path: Path,
    model: SigLIP,
    optimizer,
    scheduler,
    tokenizer: Tokenizer,
    cfg: Config,
    step: int,
    rt: Runtime,
    guard: DivergenceGuard | None = None,
) -> None:
    """Whole (gathered) model and optimizer state, written atomically by rank 0 as
    `checkpoint-<step>.pt` beside `path` (checkpoint.pt, then a link to it; the newest
    `train.keep_checkpoints` kept): resumes under any strategy and world size. Non-finite weights
    are refused (DivergenceError) before anything is written."""
    if guard is not None:
        guard.poll()  # a run of non-finite steps stops here, before it could be called good
    model_state, optimizer_state = full_model_state(model), full_optimizer_state(model, optimizer)
    if guard is not None:
        guard.check_state(step, model_state)
    if rt.is_main:
        write_checkpoint(
            path.parent,
            step,
            cfg.train.keep_checkpoints,
            model,
            tokenizer,
            cfg.data.resample,
            optimizer,
            scheduler,
            step,
            to_dict(cfg),
            model_state=model_state,
            optimizer_state=optimizer_state,
            max_num_patches=cfg.data.max_num_patches,
            world_size=rt.world_size,
        )
    barrier(rt)
    if guard is not None:
        guard.last_good = f"{path.parent / f'checkpoint-{step:08d}.pt'} (step {step})"


def evals_due(cfg: Config, step: int, total_steps: int) -> bool:
    """Periodic evaluations at this step (the final one runs after training)."""
    return bool(cfg.evals) and step < total_steps and any(e.every and step % e.every == 0 for e in cfg.evals)


def evaluate(
    cfg: Config,
    model: SigLIP,
    tokenizer: Tokenizer,
    step: int | None,
    outputs_dir: Path | None = None,
    final_step: int = 0,
) -> dict[str, float]:
    """Every evaluator of the config due at `step` (all when None, the end of training at
    `final_step`). Every rank calls it; with `outputs_dir` (rank 0, the final evaluation) each
    evaluator's per-example outputs are written there for reports."""
    d = cfg.data
    bf16 = cfg.train.precision == "bf16"
    return run_evals(
        cfg.evals,
        model,
        tokenizer,
        cfg.model.image_size,
        d.resample,
        d.digits_root,
        d.num_workers,
        bf16,
        step,
        outputs_dir,
        final_step,
        d.max_num_patches,
    )
