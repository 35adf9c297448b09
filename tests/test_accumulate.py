"""GradCache accumulation == one step on the whole batch (loss, every gradient, t' and b included)."""

import copy

import pytest
import torch

from siglip.config import ModelConfig
from siglip.loss import sigmoid_loss, softmax_loss
from siglip.model import SigLIP
from siglip.train.accumulate import forward_backward


def tiny_model() -> SigLIP:
    torch.manual_seed(0)
    return SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=64))


def batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 16, 16, generator=g) * 2 - 1, torch.randint(0, 64, (n, 8), generator=g)


def one_step(model, loss_fn, micro: int):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # Adam would blow up the ~0 grads of k.bias
    pixels, ids = batch()
    loss = forward_backward(model, model, pixels, ids, loss_fn, micro)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return loss, grads, {k: p.detach().clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("loss_fn", [sigmoid_loss, softmax_loss])
@pytest.mark.parametrize("micro", [2, 3])  # 3: uneven last micro-batch
def test_accumulation_equals_full_batch(loss_fn, micro):
    ref = tiny_model()
    # a non-trivial t', b so that their gradients are not special
    with torch.no_grad():
        ref.t_prime.fill_(1.7), ref.b.fill_(-3.0)
    acc = copy.deepcopy(ref)
    loss_full, g_full, p_full = one_step(ref, loss_fn, 0)
    loss_acc, g_acc, p_acc = one_step(acc, loss_fn, micro)
    torch.testing.assert_close(loss_acc, loss_full, rtol=1e-6, atol=1e-6)
    for k in g_full:
        torch.testing.assert_close(g_acc[k], g_full[k], rtol=1e-4, atol=1e-6, msg=k)
        torch.testing.assert_close(p_acc[k], p_full[k], rtol=1e-5, atol=1e-6, msg=k)
    assert g_full["t_prime"].abs() > 0
    assert ("b" in g_full) == (loss_fn is sigmoid_loss)  # a softmax ignores b


def test_summed_micro_losses_are_not_the_full_batch():
    """Why GradCache: naive accumulation of per-micro-batch losses gives t' and b other gradients."""
    model = tiny_model()
    pixels, ids = batch()
    naive = sum(sigmoid_loss(*model(p, i), model.t, model.b) for p, i in zip(pixels.split(2), ids.split(2)))
    naive.backward()
    g_naive = model.b.grad.clone()
    model.zero_grad()
    forward_backward(model, model, pixels, ids, sigmoid_loss, 2)
    assert not torch.allclose(g_naive, model.b.grad, rtol=1e-2)


def test_activation_checkpointing_same_gradients():
    ref = tiny_model()
    ckpt = copy.deepcopy(ref)
    ckpt.image.encoder.checkpoint_blocks = ckpt.text.encoder.checkpoint_blocks = True
    _, g_ref, _ = one_step(ref, sigmoid_loss, 0)
    _, g_ck, _ = one_step(ckpt, sigmoid_loss, 0)
    for k in g_ref:
        torch.testing.assert_close(g_ck[k], g_ref[k], msg=k)
