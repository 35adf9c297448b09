"""The sigmoid loss of SigLIP computed tile by tile: the sweeps over blocks of the logit matrix and
the single-process autograd function built on them.

Conventions shared by every function here:
- zimg (n, d) and ztxt (n, d) are L2-normalised; row i of each is the i-th pair (a positive);
  every other pairing is a negative.
- t is the temperature itself (t = exp(t')), b the bias; both 0-d tensors.
- Computed in float32 whatever the input dtype (the loss is sensitive to rounding under bf16).
- With a process group (`group=...`) the embeddings are this rank's share of the global batch and
  the loss is the one of the global batch; see `siglip/loss/ring.py` for the convention.

How the sigmoid loss avoids the (n, n) matrix (paper section 3.3): the loss is a sum of
independent per-pair terms, so it is summed over tiles of the logit matrix. Because the loss is a
scalar, its gradients are computed in the same sweep: per tile, with g = dloss/dlogits =
sigmoid(logits) - [positive],
    grad zimg_i += t * g @ ztxt_j,   grad ztxt_j += t * g.T @ zimg_i,
    grad t = sum(g * zimg @ ztxt.T) = sum(zimg * (g @ ztxt)),   grad b = sum(g)
(all divided by n). That is three (tile, tile, d) matrix products per tile, as many as a dense
forward plus backward, and `backward` only scales the stored gradients by the incoming gradient.
Peak memory beyond the inputs: the two gradients, O(n d), plus a few (tile, tile) buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from siglip.loss.negatives import _M32, NegativeSampling, order_key, random_keep


def default_tile(n_rows: int, n_cols: int) -> int:
    """Tile side: the whole block when small (one matrix product is fastest), else 2048: a
    (2048, 2048) float32 tile is 16 MiB, small beside the O(n d) gradients, and large enough that
    the matrix products run at full speed (measured on a 2-core CPU at n = 8192, d = 768, forward
    plus backward: tile 512 took 1.7x as long as 2048, 1024 1.15x)."""
    return max(n_rows, n_cols) if max(n_rows, n_cols) <= 2048 else 2048


# --------------------------------------------------------------------------------------------------
# One block of the logit matrix: rows of this process's images x one block of texts


@dataclass
class Block:
    """What one sweep over a (rows, cols) block adds up. gimg, gtxt: (rows, d), (cols, d) sums of
    g @ ztxt and g.T @ zimg (None when no gradient is wanted); loss, gsum: float64 0-d tensors."""

    loss: Tensor
    gsum: Tensor
    gimg: Tensor | None
    gtxt: Tensor | None


def tile_logits(tzi: Tensor, zj: Tensor, b: Tensor) -> Tensor:
    # (tile_r, tile_c) = b + (t * zi) @ zj.T in one BLAS call; the same op in every sweep, so the
    # threshold sweeps of hard/easy see bit-identical logits to the loss sweep. t scales the row
    # tile (tile_r, d) once, rather than going in as addmm's `alpha=`: alpha is a Python number,
    # and making one from the 0-d tensor t would wait for the GPU on every step.
    return torch.addmm(b, tzi, zj.T)


def _tile_keep(
    logits: Tensor, rows: Tensor, cols: Tensor, neg: NegativeSampling, thr: Tensor | None, r0: int, r1: int
) -> Tensor:
    """(tile_r, tile_c) bool: the kept pairs of a tile (positives are added by the caller)."""
    if neg.mode == "random":
        return random_keep(rows, cols, neg.seed, neg.ratio)
    key = order_key(logits)
    if neg.mode == "easy":
        key = _M32 - key
    return key >= thr[r0:r1, None]


def block_sweep(
    zimg: Tensor,
    ztxt: Tensor,
    t: Tensor,
    b: Tensor,
    row0: int,
    col0: int,
    neg: NegativeSampling,
    thr: Tensor | None,
    tile: int,
    want_grad: bool,
    gimg: Tensor | None = None,
) -> Block:
    """The loss sum and gradient sums of block zimg (rows, d) x ztxt (cols, d), whose first row and
    column have global indices row0 and col0 (pair (i, j) is positive iff the global indices are
    equal). thr: (rows,) int64 per-row key thresholds for hard/easy, else None. gimg: an
    accumulator to add g @ ztxt into (a new one if None)."""
    n_r, n_c = zimg.shape[0], ztxt.shape[0]
    loss = torch.zeros((), dtype=torch.float64, device=zimg.device)
    gsum = torch.zeros((), dtype=torch.float64, device=zimg.device)
    if want_grad and gimg is None:
        gimg = torch.zeros_like(zimg)
    gtxt = torch.zeros_like(ztxt) if want_grad else None
    masked = (neg.mode == "random" and neg.ratio < 1.0) or thr is not None
    for r0 in range(0, n_r, tile):
        r1 = min(r0 + tile, n_r)
        zi = zimg[r0:r1]
        tzi = zi * t  # (tile_r, d)
        rows = torch.arange(row0 + r0, row0 + r1, device=zimg.device) if masked else None
        for c0 in range(0, n_c, tile):
            c1 = min(c0 + tile, n_c)
            zj = ztxt[c0:c1]
            logits = tile_logits(tzi, zj, b)  # (tile_r, tile_c)
            # element (p, q) is a positive iff row0 + r0 + p == col0 + c0 + q: one diagonal (or none)
            offset = (row0 + r0) - (col0 + c0)
            has_pos = -(r1 - r0) < offset < (c1 - c0)
            keep = None
            if masked:
                cols = torch.arange(col0 + c0, col0 + c1, device=zimg.device)
                keep = _tile_keep(logits, rows, cols, neg, thr, r0, r1)
                if has_pos:
                    keep.diagonal(offset).fill_(True)
            # -log sigmoid(z x) = softplus(x) - [positive] * x
            sp = F.softplus(logits)
            loss += (sp.mul_(keep) if keep is not None else sp).sum(dtype=torch.float64)
            if has_pos:
                loss -= logits.diagonal(offset).sum(dtype=torch.float64)
            if not want_grad:
                continue
            g = torch.sigmoid(logits, out=logits)  # dloss/dlogits = sigmoid(x) - [positive]
            if has_pos:
                g.diagonal(offset).sub_(1.0)
            if keep is not None:
                g.mul_(keep)
            gsum += g.sum(dtype=torch.float64)
            gimg[r0:r1].addmm_(g, zj)
            gtxt[c0:c1].addmm_(g.T, zi)
    return Block(loss, gsum, gimg, gtxt)


def histogram_sweep(
    zimg: Tensor,
    ztxt: Tensor,
    t: Tensor,
    b: Tensor,
    row0: int,
    col0: int,
    neg: NegativeSampling,
    prefix: Tensor,
    shift: int,
    tile: int,
) -> Tensor:
    """One radix-select sweep for hard/easy: (rows, 256) counts, per image row, of the negatives
    whose key agrees with `prefix` (rows,) above bit shift+8, binned by key bits shift..shift+7."""
    n_r, n_c = zimg.shape[0], ztxt.shape[0]
    hist = torch.zeros(n_r * 256, dtype=torch.int64, device=zimg.device)
    for r0 in range(0, n_r, tile):
        r1 = min(r0 + tile, n_r)
        tzi = zimg[r0:r1] * t  # (tile_r, d)
        base = (torch.arange(r0, r1, device=zimg.device) * 256)[:, None]
        for c0 in range(0, n_c, tile):
            c1 = min(c0 + tile, n_c)
            key = order_key(tile_logits(tzi, ztxt[c0:c1], b))
            if neg.mode == "easy":
                key = _M32 - key
            candidate = (key >> (shift + 8)) == prefix[r0:r1, None]
            offset = (row0 + r0) - (col0 + c0)
            if -(r1 - r0) < offset < (c1 - c0):
                candidate.diagonal(offset).fill_(False)  # positives are not negatives
            # add each candidate's 1 into its (row, byte) bin; a scatter, not bincount over the
            # selected keys: selecting by a mask (and bincount on a GPU) waits for the device
            idx = base + ((key >> shift) & 255)  # (tile_r, tile_c) bin of every pair
            hist.scatter_add_(0, idx.view(-1), candidate.view(-1).to(torch.int64))
    return hist.view(n_r, 256)


def select_step(hist: Tensor, prefix: Tensor, krem: Tensor) -> tuple[Tensor, Tensor]:
    """Radix select: from per-row (rows, 256) counts, the byte of each row's krem-th largest key.
    Returns the extended prefix and the rank left within that byte's bin."""
    above = hist.flip(1).cumsum(1)  # above[:, m] = count in bins >= 255 - m
    m = (above < krem[:, None]).sum(1)  # first m where the count reaches krem
    before = torch.where(m > 0, above.gather(1, (m - 1).clamp(min=0)[:, None])[:, 0], 0)
    return prefix * 256 + (255 - m), krem - before


def as_float_params(zimg: Tensor, ztxt: Tensor, t: Tensor, b: Tensor):
    """The inputs as float32 without autograd history (a no-op for float32 inputs)."""
    return (
        zimg.detach().float().contiguous(),
        ztxt.detach().float().contiguous(),
        t.detach().float(),
        b.detach().float(),
    )


class BlockwiseSigmoidLoss(torch.autograd.Function):
    """Single process: the whole batch is one block. Gradients are made in forward and scaled in
    backward."""

    @staticmethod
    def forward(ctx, zimg, ztxt, t, b, neg: NegativeSampling, tile: int, grad_enabled: bool):
        want_grad = grad_enabled and any(ctx.needs_input_grad[:4])
        x, y, tf, bf = as_float_params(zimg, ztxt, t, b)
        n = x.shape[0]
        tile = tile or default_tile(n, n)
        thr = None
        if neg.mode in ("hard", "easy") and not neg.keeps_all(n):
            thr = row_thresholds(
                lambda prefix, shift: histogram_sweep(x, y, tf, bf, 0, 0, neg, prefix, shift, tile),
                n,
                n,
                neg,
                x.device,
            )
        blk = block_sweep(x, y, tf, bf, 0, 0, neg, thr, tile, want_grad)
        if want_grad:
            gt = torch.dot(x.view(-1), blk.gimg.view(-1)) / n  # no (n, d) temporary; before gimg is scaled
            stash_grads(ctx, (zimg, ztxt, t, b), blk.gimg.mul_(tf / n), blk.gtxt.mul_(tf / n), gt, blk.gsum / n)
        return (blk.loss / n).float()

    @staticmethod
    def backward(ctx, grad):
        return (*scaled_grads(ctx, grad), None, None, None)


def stash_grads(ctx, inputs: tuple[Tensor, ...], *grads: Tensor) -> None:
    """Keep the gradients made in forward on ctx, in the inputs' dtypes. Not `save_for_backward`:
    `scaled_grads` scales them in place and hands them over, so they are not copied (at n = 131072,
    d = 768 each is 400 MB); the price is that backward runs only once."""
    ctx.grads = [g.to(x.dtype) for g, x in zip(grads, inputs)]


def scaled_grads(ctx, grad: Tensor) -> list[Tensor]:
    if getattr(ctx, "grads", None) is None:
        raise RuntimeError("backward through the sigmoid loss can run only once (its gradients are made in forward)")
    grads, ctx.grads = ctx.grads, None
    return [g.mul_(grad.to(g.dtype)) for g in grads]


def row_thresholds(
    sweep: Callable[[Tensor, int], Tensor], n_rows: int, n_global: int, neg: NegativeSampling, device
) -> Tensor:
    """(rows,) int64 key of each row's k-th kept negative, from 4 radix-select sweeps of 8 bits.
    sweep(prefix, shift) -> (rows, 256) histogram over all of each row's negatives."""
    k = neg.k(n_global)
    if k == 0:
        return torch.full((n_rows,), 2**32, dtype=torch.int64, device=device)  # above every key
    prefix = torch.zeros(n_rows, dtype=torch.int64, device=device)
    krem = torch.full((n_rows,), k, dtype=torch.int64, device=device)
    for shift in (24, 16, 8, 0):
        prefix, krem = select_step(sweep(prefix, shift), prefix, krem)
    return prefix


def check_pairs(zimg: Tensor, ztxt: Tensor) -> None:
    if zimg.ndim != 2 or zimg.shape != ztxt.shape:
        raise ValueError(
            f"expected zimg and ztxt of the same shape (n, d), got {tuple(zimg.shape)} and {tuple(ztxt.shape)}"
        )
