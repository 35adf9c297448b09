"""The pairwise sigmoid loss of SigLIP (paper eq. 1): one entry point for one process and for a
process group, computed tile by tile without the (n, n) logit matrix (see `siglip.loss.tiles`)."""

from __future__ import annotations

import torch
from torch import Tensor

from siglip.loss.negatives import NegativeSampling
from siglip.loss.ring import distributed_sigmoid_loss
from siglip.loss.tiles import BlockwiseSigmoidLoss, check_pairs


def sigmoid_loss(
    zimg: Tensor,
    ztxt: Tensor,
    t: Tensor,
    b: Tensor,
    *,
    group=None,
    negatives: str = "all",
    ratio: float = 1.0,
    seed: int = 0,
    tile: int = 0,
    method: str = "ring",
) -> Tensor:
    """-sum_{i,j} log sigmoid(z_ij * (t * zimg_i . ztxt_j + b)) / n, z_ij = +1 if i == j else -1.

    The sum runs over all n*n pairs (or those kept by negative sampling) and is divided by n (not
    n*n), as in the paper: about 10 at initialisation (t = 10, b = -10). Computed tile by tile
    (`tile` = side of a tile, 0 = `default_tile`), never building the (n, n) matrix.

    negatives, ratio, seed: see `NegativeSampling` (`all` = the paper's loss).
    group: a torch.distributed process group (or `dist.group.WORLD`): the arguments are this rank's
    local embeddings and the result is the loss of the global batch; `method` is `ring` (the
    paper's: text blocks travel rank to rank) or `all_gather` (the reference). The returned value
    and gradients follow the convention of `siglip.loss.ring`, made so that DDP's gradient
    averaging reproduces one process on the concatenated batch.
    """
    neg = NegativeSampling(negatives, ratio, seed)
    with torch.autocast(zimg.device.type, enabled=False):  # float32 products even under autocast
        if group is not None:
            return distributed_sigmoid_loss(zimg, ztxt, t, b, group, neg, tile, method)
        check_pairs(zimg, ztxt)
        # inside forward, ctx.needs_input_grad ignores torch.no_grad(): pass the grad mode along
        return BlockwiseSigmoidLoss.apply(zimg, ztxt, t, b, neg, tile, torch.is_grad_enabled())
