"""The softmax (CLIP / InfoNCE) loss SigLIP is compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from siglip.loss.ring import distributed_softmax_loss


def softmax_loss(zimg: Tensor, ztxt: Tensor, t: Tensor, b: Tensor | None = None, *, group=None) -> Tensor:
    """CLIP's symmetric InfoNCE: mean of image->text and text->image cross-entropies over the batch.
    `b` is accepted for a common signature and ignored (a softmax is invariant to it).
    With `group`, the loss of the global batch (all-gather with gradients; same convention as the
    distributed sigmoid loss, see `siglip.loss.ring`)."""
    with torch.autocast(zimg.device.type, enabled=False):  # float32 products even under autocast
        if group is not None:
            return distributed_softmax_loss(zimg, ztxt, t, group)
        zimg, ztxt, t = zimg.float(), ztxt.float(), t.float()
        logits = t * (zimg @ ztxt.T)  # (n, n)
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
