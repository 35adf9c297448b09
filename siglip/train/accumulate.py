"""Exact large batches on small memory: gradient caching (GradCache, Gao et al. 2021).

A contrastive loss couples every pair in the batch, so summing the losses of k micro-batches (what
plain gradient accumulation does) is a different, smaller-batch loss. Instead:
1. encode the whole batch in micro-batches without keeping activations;
2. compute the loss over all embeddings and its gradient with respect to every embedding, t' and b;
3. re-encode each micro-batch with activations and back-propagate its slice of the embedding
   gradient (a surrogate `sum(z * dL/dz)` has exactly that gradient).
The result is the gradient of one step on the full batch, t' and b included (open_clip's
accumulation gives them k times their true gradient). Cost: one extra forward pass; memory: one
micro-batch of activations plus the (n, d) embeddings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from siglip.distributed import no_sync

LossFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]  # (zimg, ztxt, t, b) -> scalar loss


def forward_backward(
    forward: nn.Module,
    model: nn.Module,
    pixels: Tensor,
    ids: Tensor,
    loss_fn: LossFn,
    micro_batch_size: int = 0,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Tensor:
    """Accumulate into `.grad` the gradient of `loss_fn` over this batch; returns the loss (detached).

    forward: what to call for embeddings (`model`, or its DDP wrapper); model: the SigLIP (t', b).
    pixels (n, 3, S, S), ids (n, L): this rank's batch. loss_fn: the loss over the global batch
    (`siglip.loss.sigmoid_loss` or `softmax_loss` with the group bound). micro_batch_size: 0 or >= n = one pass.
    """
    n = pixels.shape[0]
    if micro_batch_size <= 0 or micro_batch_size >= n:
        with autocast():
            zimg, ztxt = forward(pixels, ids)
        loss = loss_fn(zimg, ztxt, model.t, model.b)
        loss.backward()
        return loss.detach()

    chunks = list(zip(pixels.split(micro_batch_size), ids.split(micro_batch_size)))
    # 1. embeddings of the whole batch, no activations kept; each chunk's random state is kept so that
    # step 3 draws the same dropout masks (model.dropout > 0) and re-encodes exactly these embeddings
    rng_states, embeddings = [], []
    with torch.no_grad(), autocast():
        for p, i in chunks:
            rng_states.append(_rng_state(p.device))
            embeddings.append(forward(p, i))
    rng_after = _rng_state(pixels.device)
    zimg = torch.cat([z for z, _ in embeddings]).requires_grad_()
    ztxt = torch.cat([z for _, z in embeddings]).requires_grad_()
    # 2. the loss and its gradient with respect to every embedding and to t', b
    scalars = [p for p in (model.t_prime, model.b) if p.requires_grad]
    loss = loss_fn(zimg, ztxt, model.t, model.b)
    gimg, gtxt, *gscalars = torch.autograd.grad(loss, [zimg, ztxt, *scalars], allow_unused=True)  # softmax: no b
    # 3. re-encode each micro-batch and back-propagate its slice; t' and b ride on the last one so that
    # DDP sees every parameter in the one backward that reduces the gradients
    for k, ((p, i), gi, gt) in enumerate(zip(chunks, gimg.split(micro_batch_size), gtxt.split(micro_batch_size))):
        last = k == len(chunks) - 1
        with contextlib.nullcontext() if last else no_sync(forward):
            _set_rng_state(rng_states[k], p.device)
            with autocast():
                zi, zt = forward(p, i)
            surrogate = (zi.float() * gi.float()).sum() + (zt.float() * gt.float()).sum()
            if last:
                surrogate = surrogate + sum((s * g).sum() for s, g in zip(scalars, gscalars) if g is not None)
            surrogate.backward()
    _set_rng_state(rng_after, pixels.device)
    return loss.detach()


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The CPU generator's state and, on a GPU, that device's."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
