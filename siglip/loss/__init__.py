"""The losses of SigLIP and its baseline.

- `sigmoid.py`: the pairwise sigmoid loss (paper eq. 1), the public entry point `sigmoid_loss`;
- `tiles.py`: how it is computed tile by tile in O(n d) memory, gradients made in the same sweep;
- `negatives.py`: negative sampling (all, random, hard, easy; paper Fig. 6);
- `ring.py`: the loss over a process group (the paper's ring of text blocks, and all-gather);
- `softmax.py`: CLIP's softmax loss, the baseline.
Conventions: zimg, ztxt (n, d) L2-normalised, row i of each is a positive pair; t = exp(t') the
temperature, b the bias, both 0-d; computed in float32 whatever the input dtype.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from siglip.loss.negatives import NEGATIVES, NegativeSampling, order_key, random_keep
from siglip.loss.ring import METHODS
from siglip.loss.sigmoid import sigmoid_loss
from siglip.loss.softmax import softmax_loss

__all__ = [
    "LOSSES",
    "METHODS",
    "NEGATIVES",
    "NegativeSampling",
    "get_loss",
    "loss_from_config",
    "order_key",
    "random_keep",
    "sigmoid_loss",
    "softmax_loss",
]

LOSSES = {"sigmoid": sigmoid_loss, "softmax": softmax_loss}


def get_loss(name: str):
    """The loss function for a config's `loss.name`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: choose one of {sorted(LOSSES)}")
    return LOSSES[name]


def loss_from_config(cfg, group=None) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """`loss(zimg, ztxt, t, b)` for a `LossConfig` (name, negative sampling, tile, distributed
    method), bound to `group` (None = one process)."""
    fn = get_loss(cfg.name)
    if cfg.name == "softmax":
        if cfg.negatives != "all":
            raise ValueError(f"loss.negatives={cfg.negatives!r} applies to the sigmoid loss only, not softmax")
        return lambda zimg, ztxt, t, b: softmax_loss(zimg, ztxt, t, b, group=group)
    NegativeSampling(cfg.negatives, cfg.negative_ratio, cfg.negative_seed)  # fail early on bad values
    return lambda zimg, ztxt, t, b: fn(
        zimg,
        ztxt,
        t,
        b,
        group=group,
        negatives=cfg.negatives,
        ratio=cfg.negative_ratio,
        seed=cfg.negative_seed,
        tile=cfg.tile,
        method=cfg.distributed,
    )
