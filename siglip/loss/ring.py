"""The sigmoid and softmax losses over a torch.distributed process group (paper section 3.3).

Convention, shared by every function here (and relied on by the DDP training loop):
- The arguments are this rank's LOCAL embeddings, (n, d) each, the same n on every rank; the global
  batch is their concatenation in rank order, N = world_size * n pairs. t and b are the same on
  every rank.
- The RETURNED value is the GLOBAL loss, the same on every rank: the sum over all N*N pairs (or
  those kept by negative sampling) divided by N.
- backward gives this rank's embeddings world_size * dL/dz_local, and gives t and b gradients whose
  MEAN over ranks is dL/dt (resp. dL/db).
So when DDP averages the parameter gradients over ranks, each parameter gets exactly the gradient
of one process training on the concatenated batch.

Methods for the sigmoid loss:
- `ring` (the default; the paper's): each rank keeps its images; the text blocks travel rank r ->
  r + 1 in world_size steps, each step adding one (n, n) block computed tile by tile. Sending the
  next text block overlaps computing on the current one. The gradient of a text block travels with
  it and after the last step arrives back at its owner. Memory per rank: O(n d + tile^2) whatever
  the world size; communication: 2 (n, d) float32 messages per step.
- `all_gather` (the reference): every rank gathers all N pairs (with gradients) and computes the
  whole loss. Memory O(N d), compute world_size times the ring's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from siglip.loss.negatives import NegativeSampling
from siglip.loss.tiles import (
    BlockwiseSigmoidLoss,
    as_float_params,
    block_sweep,
    check_pairs,
    default_tile,
    histogram_sweep,
    row_thresholds,
    scaled_grads,
    stash_grads,
)

METHODS = ("ring", "all_gather")


class _AllGather(torch.autograd.Function):
    """(n, d) on each rank -> (world * n, d), rank-major, on every rank. backward: each rank's block
    gets the sum over ranks of the gradients for it (an all-reduce, which every backend has)."""

    @staticmethod
    def forward(ctx, z: Tensor, group) -> Tensor:
        ctx.group, ctx.n, ctx.rank = group, z.shape[0], dist.get_rank(group)
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, z.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None


def all_gather_with_grad(z: Tensor, group) -> Tensor:
    """The global batch (world * n, d) from every rank's (n, d), differentiable."""
    return _AllGather.apply(z, group)


def _local_size(z: Tensor, group) -> int:
    """n, checked to be the same on every rank (the ring passes fixed-size blocks)."""
    n = z.shape[0]
    sizes = torch.full((2,), n, device=z.device)  # (n, -n): a fill, not a copy from the host
    sizes[1].neg_()
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX, group=group)
    if z.device.type != "cpu":  # reading the sizes back would wait for the device every step
        torch._assert_async(sizes[0] + sizes[1] == 0, "distributed loss needs the same local batch on every rank")
        return n
    if sizes[0] != n or -sizes[1] != n:
        raise ValueError(
            f"distributed loss needs the same local batch on every rank, got {n} here and sizes in [{-sizes[1]}, {sizes[0]}]"
        )
    return n


def distributed_sigmoid_loss(
    zimg: Tensor, ztxt: Tensor, t: Tensor, b: Tensor, group, neg: NegativeSampling, tile: int = 0, method: str = "ring"
) -> Tensor:
    """The global sigmoid loss from this rank's (n, d) embeddings; see the module docstring."""
    check_pairs(zimg, ztxt)
    if method not in METHODS:
        raise ValueError(f"unknown distributed loss method {method!r}: choose one of {list(METHODS)}")
    _local_size(zimg, group)
    if dist.get_world_size(group) == 1:
        return BlockwiseSigmoidLoss.apply(zimg, ztxt, t, b, neg, tile, torch.is_grad_enabled())
    if method == "all_gather":
        all_img = all_gather_with_grad(zimg.float(), group)
        all_txt = all_gather_with_grad(ztxt.float(), group)
        # every rank computes the same full loss; the gather's backward sums the W identical
        # gradients of each rank's block, giving W * dL/dz_local as the convention says
        return BlockwiseSigmoidLoss.apply(all_img, all_txt, t, b, neg, tile, torch.is_grad_enabled())
    return _RingSigmoidLoss.apply(zimg, ztxt, t, b, group, neg, tile, torch.is_grad_enabled())


class _Ring:
    """Point-to-point exchange with the ring's neighbours: send to rank + 1, receive from rank - 1."""

    def __init__(self, group) -> None:
        self.group = group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.next = dist.get_global_rank(group, (self.rank + 1) % self.world)
        self.prev = dist.get_global_rank(group, (self.rank - 1) % self.world)
        self.tag = 0

    def exchange(self, send: Tensor, recv: Tensor) -> list:
        """Start sending `send` on and receiving into `recv`; returns the requests to wait on. Both
        neighbours post their exchanges in the same order, which is how messages are matched."""
        self.tag += 1
        ops = [
            dist.P2POp(dist.isend, send, self.next, self.group, self.tag),
            dist.P2POp(dist.irecv, recv, self.prev, self.group, self.tag),
        ]
        return dist.batch_isend_irecv(ops)

    def sweep(self, ztxt: Tensor, visit) -> None:
        """visit(block, owner) for each of the world's text blocks, starting with this rank's own;
        the transfer of the next block overlaps the visit of the current one."""
        block = ztxt
        for step in range(self.world):
            last = step == self.world - 1
            if not last:
                incoming = torch.empty_like(block)
                requests = self.exchange(block, incoming)
            visit(block, (self.rank - step) % self.world)
            if not last:
                for r in requests:
                    r.wait()
                block = incoming


class _RingSigmoidLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, zimg, ztxt, t, b, group, neg: NegativeSampling, tile: int, grad_enabled: bool):
        want_grad = grad_enabled and any(ctx.needs_input_grad[:4])
        x, y, tf, bf = as_float_params(zimg, ztxt, t, b)
        ring = _Ring(group)
        w, n = ring.world, x.shape[0]
        big_n = w * n
        row0 = ring.rank * n
        tile = tile or default_tile(n, n)
        thr = None
        if neg.mode in ("hard", "easy") and not neg.keeps_all(big_n):

            def histogram(prefix: Tensor, shift: int) -> Tensor:
                hist = torch.zeros(n, 256, dtype=torch.int64, device=x.device)

                def visit(block: Tensor, owner: int) -> None:
                    hist.add_(histogram_sweep(x, block, tf, bf, row0, owner * n, neg, prefix, shift, tile))

                ring.sweep(y, visit)
                return hist

            thr = row_thresholds(histogram, n, big_n, neg, x.device)

        loss = torch.zeros((), dtype=torch.float64, device=x.device)
        gsum = torch.zeros((), dtype=torch.float64, device=x.device)
        gimg = torch.zeros_like(x) if want_grad else None
        grad_in, grad_requests = None, []  # the travelling gradient of the block we are about to get

        def visit(block: Tensor, owner: int) -> None:
            nonlocal loss, gsum, grad_in, grad_requests
            blk = block_sweep(x, block, tf, bf, row0, owner * n, neg, thr, tile, want_grad, gimg)
            loss += blk.loss
            gsum += blk.gsum
            if not want_grad:
                return
            for r in grad_requests:  # what earlier ranks added to this block's gradient
                r.wait()
            if grad_in is not None:
                blk.gtxt += grad_in
            # pass it on; after the last step this delivers each block's gradient to its owner
            grad_in = torch.empty_like(blk.gtxt)
            grad_requests = ring.exchange(blk.gtxt, grad_in)
            ring_keepalive.append(blk.gtxt)

        ring_keepalive: list[Tensor] = []  # send buffers must live until their sends complete
        ring.sweep(y, visit)
        for r in grad_requests:
            r.wait()
        ring_keepalive.clear()
        total = loss.clone()
        dist.all_reduce(total, group=group)
        if want_grad:
            # this rank's share of dL/dt and dL/db, times w so that their mean over ranks is dL/dt
            gt = torch.dot(x.view(-1), gimg.view(-1)) * (w / big_n)
            scale = tf * (w / big_n)
            stash_grads(ctx, (zimg, ztxt, t, b), gimg.mul_(scale), grad_in.mul_(scale), gt, gsum * (w / big_n))
        return (total / big_n).float()

    @staticmethod
    def backward(ctx, grad):
        return (*scaled_grads(ctx, grad), None, None, None, None)


def distributed_softmax_loss(zimg: Tensor, ztxt: Tensor, t: Tensor, group) -> Tensor:
    """CLIP's symmetric InfoNCE over the global batch, from this rank's (n, d) embeddings; the
    convention of the module docstring. Each rank computes the rows of its own images (against all
    N texts) and of its own texts (against all N images): memory O(n N), not O(N^2)."""
    check_pairs(zimg, ztxt)
    n = _local_size(zimg, group)
    w, rank = dist.get_world_size(group), dist.get_rank(group)
    big_n = w * n
    zimg, ztxt, t = zimg.float().contiguous(), ztxt.float().contiguous(), t.float()
    all_img = all_gather_with_grad(zimg, group)  # (N, d), with gradients
    all_txt = all_gather_with_grad(ztxt, group)
    labels = torch.arange(rank * n, rank * n + n, device=zimg.device)
    local = (
        F.cross_entropy(t * (zimg @ all_txt.T), labels, reduction="sum")  # (n, N) image -> text
        + F.cross_entropy(t * (ztxt @ all_img.T), labels, reduction="sum")  # (n, N) text -> image
    ) / (2 * big_n)
    total = local.detach().clone()
    dist.all_reduce(total, group=group)
    # value: the global loss; gradient: w * this rank's share. all_gather's backward sums the
    # shares' gradients over ranks (all_gather_with_grad), so z_local gets w * dL/dz_local and t's mean over ranks is dL/dt
    return w * local + (total - w * local).detach()
