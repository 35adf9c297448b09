"""The sigmoid loss of SigLIP and the softmax (CLIP / InfoNCE) loss it is compared with.

Conventions shared by every function here:
- zimg (n, d) and ztxt (n, d) are L2-normalised; row i of each is the i-th pair (a positive);
  every other pairing is a negative.
- t is the temperature itself (t = exp(t')), b the bias; both 0-d tensors.
- Computed in float32 whatever the input dtype (the loss is sensitive to rounding under bf16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_loss(zimg: Tensor, ztxt: Tensor, t: Tensor, b: Tensor) -> Tensor:
    """-sum_{i,j} log sigmoid(z_ij * (t * zimg_i . ztxt_j + b)) / n, z_ij = +1 if i == j else -1.

    The sum runs over all n*n pairs and is divided by n (not n*n), as in the paper: about 10 at
    initialisation (t = 10, b = -10). Uses -log sigmoid(x) = softplus(-x) and
    softplus(-x) = softplus(x) - x, so no (n, n) label matrix is built.
    """
    zimg, ztxt, t, b = zimg.float(), ztxt.float(), t.float(), b.float()
    logits = t * (zimg @ ztxt.T) + b  # (n, n): positives on the diagonal
    return (F.softplus(logits).sum() - logits.diagonal().sum()) / zimg.shape[0]


def softmax_loss(zimg: Tensor, ztxt: Tensor, t: Tensor, b: Tensor | None = None) -> Tensor:
    """CLIP's symmetric InfoNCE: mean of image->text and text->image cross-entropies over the batch.
    `b` is accepted for a common signature and ignored (a softmax is invariant to it)."""
    zimg, ztxt, t = zimg.float(), ztxt.float(), t.float()
    logits = t * (zimg @ ztxt.T)  # (n, n)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


LOSSES = {"sigmoid": sigmoid_loss, "softmax": softmax_loss}


def get_loss(name: str):
    """The loss function for a config's `loss.name`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: choose one of {sorted(LOSSES)}")
    return LOSSES[name]
