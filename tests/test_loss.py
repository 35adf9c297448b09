"""The blockwise sigmoid loss against a naive dense reference (loss and all four gradients), with
every negative-sampling mode, several tile sizes, and non-float32 inputs."""

import pytest
import torch
import torch.nn.functional as F

from siglip.config import LossConfig
from siglip.loss import NegativeSampling, loss_from_config, order_key, random_keep, sigmoid_loss, softmax_loss


def dense_sigmoid_loss(zimg, ztxt, t, b, negatives="all", ratio=1.0, seed=0):
    """The paper's formula written out with the full (n, n) label matrix and an explicit mask."""
    n = zimg.shape[0]
    logits = t * zimg.float() @ ztxt.float().T + b
    labels = 2 * torch.eye(n) - 1  # +1 on the diagonal, -1 elsewhere
    keep = torch.ones(n, n, dtype=torch.bool)
    if negatives == "random":
        keep = random_keep(torch.arange(n), torch.arange(n), seed, ratio)
    elif negatives in ("hard", "easy"):
        k = round(ratio * (n - 1))
        neg_logits = logits.detach().masked_fill(
            torch.eye(n, dtype=torch.bool), float("-inf") if negatives == "hard" else float("inf")
        )
        idx = neg_logits.topk(k, dim=1, largest=negatives == "hard").indices
        keep = torch.zeros(n, n, dtype=torch.bool).scatter_(1, idx, True)
    keep |= torch.eye(n, dtype=torch.bool)
    return -(F.logsigmoid(labels * logits) * keep).sum() / n


def make_batch(n, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    zimg = F.normalize(torch.randn(n, d, generator=g), dim=1).to(dtype).requires_grad_()
    ztxt = F.normalize(torch.randn(n, d, generator=g), dim=1).to(dtype).requires_grad_()
    # a trained-looking t so that hard and easy negatives differ clearly
    t = torch.tensor(12.0, requires_grad=True)
    b = torch.tensor(-4.0, requires_grad=True)
    return zimg, ztxt, t, b


def loss_and_grads(fn, zimg, ztxt, t, b, **kw):
    loss = fn(zimg, ztxt, t, b, **kw)
    return loss, torch.autograd.grad(loss, (zimg, ztxt, t, b))


def assert_close(got, want, rel=1e-5):
    got, want = got.double(), want.double()
    err = (got - want).abs().max() / want.abs().max().clamp(min=1e-12)
    assert err <= rel, f"relative error {err:.2e}"


@pytest.mark.parametrize("tile", [0, 1, 7, 16, 64])
def test_blockwise_equals_dense(tile):
    batch = make_batch(37, 16)
    loss, grads = loss_and_grads(sigmoid_loss, *batch, tile=tile)
    want, want_grads = loss_and_grads(dense_sigmoid_loss, *batch)
    assert_close(loss, want)
    for g, w in zip(grads, want_grads):
        assert_close(g, w)


@pytest.mark.parametrize("negatives", ["random", "hard", "easy"])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_negative_sampling_equals_dense(negatives, ratio):
    batch = make_batch(29, 8, seed=1)
    loss, grads = loss_and_grads(sigmoid_loss, *batch, negatives=negatives, ratio=ratio, seed=3, tile=8)
    want, want_grads = loss_and_grads(dense_sigmoid_loss, *batch, negatives=negatives, ratio=ratio, seed=3)
    assert_close(loss, want)
    for g, w in zip(grads, want_grads):
        assert_close(g, w)


def test_hard_easy_and_random_differ_as_expected():
    batch = make_batch(64, 8, seed=2)
    full = sigmoid_loss(*batch).item()
    hard = sigmoid_loss(*batch, negatives="hard", ratio=0.25).item()
    easy = sigmoid_loss(*batch, negatives="easy", ratio=0.25).item()
    rand = sigmoid_loss(*batch, negatives="random", ratio=0.25).item()
    assert easy < rand < hard < full  # the hardest negatives carry most of the loss


def test_random_keep_is_seeded_and_near_ratio():
    rows, cols = torch.arange(500), torch.arange(400)
    keep = random_keep(rows, cols, seed=5, ratio=0.3)
    assert abs(keep.float().mean().item() - 0.3) < 0.01
    assert torch.equal(keep[100:200, 50:90], random_keep(rows[100:200], cols[50:90], 5, 0.3))  # tiling-free
    assert not torch.equal(keep, random_keep(rows, cols, seed=6, ratio=0.3))


def test_order_key_preserves_float_order():
    x = torch.tensor([-float("inf"), -3e9, -2.5, -1e-30, -0.0, 0.0, 1e-30, 0.5, 7.0, 3e9, float("inf")])
    assert (order_key(x).diff() > 0).all()
    assert order_key(x).min() >= 0 and order_key(x).max() < 2**32


def test_bf16_inputs_get_bf16_grads():
    zimg, ztxt, t, b = make_batch(20, 8, dtype=torch.bfloat16)
    loss, grads = loss_and_grads(sigmoid_loss, zimg, ztxt, t, b, tile=6)
    want, want_grads = loss_and_grads(dense_sigmoid_loss, zimg, ztxt, t, b)
    assert loss.dtype == torch.float32 and grads[0].dtype == torch.bfloat16
    assert_close(loss, want)
    assert_close(grads[0].float(), want_grads[0].float(), rel=1e-2)


def test_without_grad_and_backward_scaling():
    zimg, ztxt, t, b = make_batch(10, 4)
    with torch.no_grad():
        value = sigmoid_loss(zimg, ztxt, t, b)
    assert not value.requires_grad
    assert_close(value, dense_sigmoid_loss(zimg, ztxt, t, b).detach())
    (3 * sigmoid_loss(zimg, ztxt, t, b)).backward()  # backward scales by the incoming gradient
    want = torch.autograd.grad(3 * dense_sigmoid_loss(zimg, ztxt, t, b), zimg)[0]
    assert_close(zimg.grad, want)


def test_bad_options_name_the_problem():
    with pytest.raises(ValueError, match="negative sampling"):
        NegativeSampling("hardest")
    with pytest.raises(ValueError, match="ratio"):
        NegativeSampling("random", 1.5)
    with pytest.raises(ValueError, match="softmax"):
        loss_from_config(LossConfig(name="softmax", negatives="hard"))


def test_loss_from_config():
    batch = make_batch(12, 4)
    cfg = LossConfig(negatives="hard", negative_ratio=0.5, tile=5)
    assert_close(loss_from_config(cfg)(*batch), dense_sigmoid_loss(*batch, negatives="hard", ratio=0.5))
    assert_close(loss_from_config(LossConfig(name="softmax"))(*batch), softmax_loss(*batch))


def test_no_grad_skips_the_gradient_products(monkeypatch):
    import siglip.loss.tiles as loss_module

    wanted = []
    sweep = loss_module.block_sweep
    monkeypatch.setattr(loss_module, "block_sweep", lambda *a: wanted.append(a[9]) or sweep(*a))
    zimg, ztxt, t, b = make_batch(8, 4)
    with torch.no_grad():
        sigmoid_loss(zimg, ztxt, t, b)
    sigmoid_loss(zimg.detach(), ztxt.detach(), t.detach(), b.detach())
    sigmoid_loss(zimg, ztxt, t, b)
    assert wanted == [False, False, True]


def test_float32_under_autocast():
    batch = make_batch(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sigmoid_loss(*batch, negatives="hard", ratio=0.5, tile=5)
    assert_close(loss, dense_sigmoid_loss(*batch, negatives="hard", ratio=0.5))
