"""Divergence guard: a step whose loss or gradients hold NaN/inf is skipped (no optimizer update),
counted and logged; K such steps in a row stop training with an error that names the last good
checkpoint. Checkpoints are checked too, so a non-finite one is never written.

    guard = DivergenceGuard(patience=tc.nonfinite_patience, step=start_step)
    if guard.check(loss, model, rt.group):   # once per step taken; every rank gets the same answer
        optimizer.step()
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from siglip.checkpoint import nonfinite_keys

log = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """Training stopped on non-finite numbers; the message names the last good checkpoint."""


def all_finite(loss: Tensor, model: nn.Module, group: dist.ProcessGroup | None = None) -> bool:
    """Is the loss finite and is every gradient (this rank's shard of a sharded one) finite, on every
    rank? One max-abs per gradient (no overflow for large finite values) and one flag all-reduce."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in model.parameters()]
    grads = [g for g in grads if g is not None and g.numel()]
    bad = (~torch.isfinite(loss.detach().float())).any().float()
    if grads:
        amax = torch.stack([n.float() for n in torch._foreach_norm(grads, float("inf"))])
        bad = bad + (~torch.isfinite(amax)).any().float()
    if group is not None:
        dist.all_reduce(bad, group=group)
    return bad.item() == 0


@dataclass
class DivergenceGuard:
    """Counts skipped (non-finite) steps. `patience`: stop at this many in a row (>= 1). `step`: the
    steps taken so far (`check` counts one per call). `last_good`: the newest checkpoint known good
    (the loop updates it after each save)."""

    patience: int = 10
    step: int = 0
    last_good: str = "(none: no checkpoint written or resumed yet)"
    skipped: int = 0
    consecutive: int = 0

    def __post_init__(self):
        if self.patience < 1:
            raise ValueError(f"train.nonfinite_patience must be >= 1, got {self.patience}")

    def check(self, loss: Tensor, model: nn.Module, group: dist.ProcessGroup | None = None) -> bool:
        """True: apply this step's update. False: skip it (logged, counted). Raises DivergenceError
        at `patience` non-finite steps in a row. Call once per step, after the backward."""
        self.step += 1
        step = self.step
        if all_finite(loss, model, group):
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        value = loss.detach().float().reshape(-1)[0].item()
        log.warning(
            "step %d: non-finite %s; update skipped (%d in a row, %d in all)",
            step,
            f"loss ({value})" if not math.isfinite(value) else "gradient",
            self.consecutive,
            self.skipped,
        )
        if self.consecutive >= self.patience:
            raise DivergenceError(
                f"step {step}: {self.consecutive} steps in a row with a non-finite loss or gradient; stopping. "
                f"Last good checkpoint: {self.last_good}. Resume from it with --resume (e.g. with a lower "
                "learning rate, train.precision=fp32 or optim.grad_clip), or raise train.nonfinite_patience."
            )
        return False

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
