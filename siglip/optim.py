"""AdamW with SigLIP's no-decay rules and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from siglip.config import OptimConfig

# Parameters named like this are never decayed (besides every 0-d/1-d tensor: biases, norms, t', b).
NO_DECAY_NAMES = ("pos_embed", "token_embed", "probe")


def decays(name: str, p: torch.Tensor) -> bool:
    """Weight decay applies to matrices and kernels only: not to biases, LayerNorms, embeddings,
    the MAP probe, t' or b."""
    return p.ndim >= 2 and not any(k in name for k in NO_DECAY_NAMES)


def lr_mult(name: str, cfg: OptimConfig) -> float:
    """The tower's lr multiplier: `image.*` and `text.*` parameters; t' and b train at the base lr."""
    tower = name.split(".")[0]
    return {"image": cfg.image_lr_mult, "text": cfg.text_lr_mult}.get(tower, 1.0)


def freeze_towers(model: nn.Module, cfg: OptimConfig) -> list[str]:
    """requires_grad=False on every tower whose lr multiplier is 0 (SigLiT: the image tower), so
    neither the update nor weight decay can touch it. Returns the frozen towers' names."""
    frozen = [t for t, m in (("image", cfg.image_lr_mult), ("text", cfg.text_lr_mult)) if m == 0]
    for t in frozen:
        getattr(model, t).requires_grad_(False)
    return frozen


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """AdamW groups over the trainable parameters: (decay or not) x (lr multiplier). Each group's
    `lr` is the base lr times its multiplier, so the schedule scales all of them alike."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((decays(name, p), lr_mult(name, cfg)), []).append(p)
    return [
        {"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * mult}
        for (decay, mult), ps in groups.items()
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    for key in ("image_lr_mult", "text_lr_mult"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"optim.{key} must be >= 0 (0 freezes the tower), got {getattr(cfg, key)}")
    freeze_towers(model, cfg)
    # the fused kernel: one pass over each tensor; one B/16 step on a 2-core CPU took 11.6 s against
    # 39.8 s for PyTorch's default (a loop over the tensors) and 40.8 s for foreach
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)


def step_unless(optimizer: torch.optim.Optimizer, found_inf: Tensor | None) -> None:
    """`optimizer.step()`, skipped where `found_inf` (0-d float32 on the device, 1.0 = skip; None =
    always step) says so, without reading it to the host. The fused AdamW takes the flag as
    GradScaler hands it over: its kernel leaves the weights, the moments and the weight decay alone
    and its step count is put back, all on the device. An optimizer without that support reads the
    flag on the host (one wait for the device per step)."""
    if found_inf is None:
        optimizer.step()
    elif getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.found_inf = found_inf  # read by the fused kernels (torch.optim.adam._fused_adam)
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif found_inf.item() == 0:
        optimizer.step()


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at `step` (0-based): linear warmup to 1 over `warmup_steps`, then
    cosine decay to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
