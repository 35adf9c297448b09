"""Divergence guard: a step whose loss or gradients hold NaN/inf is skipped (no optimizer update),
counted and logged; K such steps in a row stop training with an error that names the last good
checkpoint. Checkpoints are checked too, so a non-finite one is never written.

Nothing here waits for the device during a step: `observe` computes the step's flag on the device
and the fused AdamW skips the update there (`siglip.optim.step_unless`); `poll` reads the flags of
the steps since the last poll in one copy, at logged steps and before each checkpoint. So a run of
K non-finite steps is reported at the first logged step after it (naming the step where it reached
K), and the last good checkpoint it names is still the last one written before that step.

    guard = DivergenceGuard(patience=tc.nonfinite_patience, step=start_step)
    found_inf = guard.observe(loss, model, rt.group)   # once per step taken; every rank gets the same flag
    step_unless(optimizer, found_inf)
    ...
    guard.poll()                                       # at logged steps: warnings, counts, the patience stop
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from siglip.checkpoint import nonfinite_keys

log = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """Training stopped on non-finite numbers; the message names the last good checkpoint."""


def nonfinite_flags(loss: Tensor, model: nn.Module, group: dist.ProcessGroup | None = None) -> Tensor:
    """(2,) float32 on the loss's device: [loss non-finite, some gradient non-finite], each 1.0 or 0.0
    and the max over the ranks of `group`, so every rank (also an FSDP2 shard) sees the same flags.
    One max-abs per gradient (no overflow for large finite values) and one all-reduce; nothing is
    read to the host."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in model.parameters()]
    grads = [g for g in grads if g is not None and g.numel()]
    loss_bad = (~torch.isfinite(loss.detach().float())).any()
    grad_bad = torch.zeros((), dtype=torch.bool, device=loss.device)
    if grads:
        amax = torch.stack([n.float() for n in torch._foreach_norm(grads, float("inf"))])
        grad_bad = (~torch.isfinite(amax)).any().to(loss.device)
    flags = torch.stack([loss_bad, grad_bad]).float()
    if group is not None:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
    return flags


def all_finite(loss: Tensor, model: nn.Module, group: dist.ProcessGroup | None = None) -> bool:
    """Is the loss finite and is every gradient finite, on every rank? Read on the host (waits for
    the device): for tests and one-off checks; the training step uses `DivergenceGuard.observe`."""
    return not nonfinite_flags(loss, model, group).any().item()


@dataclass
class DivergenceGuard:
    """Counts skipped (non-finite) steps. `patience`: stop at this many in a row (>= 1). `step`: the
    steps taken so far (`observe` counts one per call). `last_good`: the newest checkpoint known
    good (the loop updates it after each save). `last_skipped`: whether the newest polled step was
    skipped."""

    patience: int = 10
    step: int = 0
    last_good: str = "(none: no checkpoint written or resumed yet)"
    skipped: int = 0
    consecutive: int = 0
    last_skipped: bool = False
    # (step, (3,) tensor [loss, loss non-finite, gradient non-finite]) of the steps not yet polled
    pending: list[tuple[int, Tensor]] = field(default_factory=list, repr=False)

    def __post_init__(self):
        if self.patience < 1:
            raise ValueError(f"train.nonfinite_patience must be >= 1, got {self.patience}")

    def observe(self, loss: Tensor, model: nn.Module, group: dist.ProcessGroup | None = None) -> Tensor:
        """This step's verdict, computed on the device and kept for `poll`: a 0-d float32 `found_inf`
        (1.0: skip the update) for `siglip.optim.step_unless`. Call once per step, after the backward."""
        self.step += 1
        flags = nonfinite_flags(loss, model, group)
        self.pending.append((self.step, torch.cat([loss.detach().float().reshape(-1)[:1], flags])))
        return flags.amax()

    def poll(self) -> None:
        """Read the verdicts of the steps since the last poll (one copy to the host), log each skipped
        step, count them, and raise DivergenceError where `patience` non-finite steps in a row were
        reached (naming that step)."""
        if not self.pending:
            return
        steps = [s for s, _ in self.pending]
        rows = torch.stack([v for _, v in self.pending]).tolist()
        self.pending.clear()
        for step, (value, loss_bad, grad_bad) in zip(steps, rows):
            self.last_skipped = bool(loss_bad or grad_bad)
            if not self.last_skipped:
                self.consecutive = 0
                continue
            self.skipped += 1
            self.consecutive += 1
            log.warning(
                "step %d: non-finite %s; update skipped (%d in a row, %d in all)",
                step,
                f"loss ({value})" if not math.isfinite(value) else "gradient",
                self.consecutive,
                self.skipped,
            )
            if self.consecutive >= self.patience:
                seen = f" (read at step {self.step})" if self.step != step else ""
                raise DivergenceError(
                    f"step {step}: {self.consecutive} steps in a row with a non-finite loss or gradient; stopping"
                    f"{seen}. Last good checkpoint: {self.last_good}. Resume from it with --resume (e.g. with a "
                    "lower learning rate, train.precision=fp32 or optim.grad_clip), or raise train.nonfinite_patience."
                )

    def check(self, loss: Tensor, model: nn.Module, group: dist.ProcessGroup | None = None) -> bool:
        """`observe` then `poll`, on the host: True = apply this step's update. Waits for the device;
        the training loop uses `observe` and `poll` instead."""
        self.observe(loss, model, group)
        self.poll()
        return not self.last_skipped

    def record(self) -> dict[str, int]:
        """For the metrics record: the running count, once a step was skipped."""
        return {"nonfinite_skipped": self.skipped} if self.skipped else {}

    def check_state(self, step: int, state: dict[str, Tensor]) -> None:
        """Refuse to checkpoint non-finite weights (every rank calls this with the same full state)."""
        bad = nonfinite_keys(state)
        if bad:
            raise DivergenceError(
                f"step {step}: non-finite weights in {bad[:3]}; not writing a checkpoint. "
                f"Last good checkpoint: {self.last_good}."
            )
