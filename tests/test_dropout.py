"""`model.dropout`: off by default (the architecture is unchanged and draws no random numbers), active
only in training mode, and exact under GradCache accumulation (the re-encoding draws the same masks)."""

import copy

import torch

from siglip.config import ModelConfig
from siglip.loss import sigmoid_loss
from siglip.model import SigLIP
from siglip.train.accumulate import forward_backward


def model_with(dropout: float) -> SigLIP:
    torch.manual_seed(0)
    return SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=64, dropout=dropout))


def batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 16, 16, generator=g) * 2 - 1, torch.randint(0, 64, (n, 8), generator=g)


def test_default_draws_no_random_numbers_and_matches_eval():
    model, (pixels, ids) = model_with(0.0), batch()
    state = torch.get_rng_state()
    z_train = model(pixels, ids)
    assert torch.equal(torch.get_rng_state(), state)
    z_eval = model.eval()(pixels, ids)
    for a, b in zip(z_train, z_eval):
        assert torch.equal(a, b)


def test_dropout_changes_training_forward_only():
    model, (pixels, ids) = model_with(0.3), batch()
    plain = copy.deepcopy(model)
    plain.config.dropout = 0.0
    for m in plain.modules():
        if hasattr(m, "dropout"):
            m.dropout = 0.0
    assert not torch.allclose(model(pixels, ids)[0], plain(pixels, ids)[0])
    model.eval(), plain.eval()
    assert torch.equal(model(pixels, ids)[0], plain(pixels, ids)[0])


def test_accumulation_with_dropout_is_exact():
    """Reference: the micro-batches encoded one after another WITH gradients (one set of masks), the
    loss over all of them, one backward. GradCache must give the same gradient."""
    ref = model_with(0.2)
    acc = copy.deepcopy(ref)
    pixels, ids = batch()
    torch.manual_seed(5)
    parts = [ref(p, i) for p, i in zip(pixels.split(2), ids.split(2))]
    zimg, ztxt = torch.cat([z for z, _ in parts]), torch.cat([z for _, z in parts])
    sigmoid_loss(zimg, ztxt, ref.t, ref.b).backward()
    torch.manual_seed(5)
    forward_backward(acc, acc, pixels, ids, sigmoid_loss, 2)
    for (k, p), q in zip(ref.named_parameters(), acc.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=k)
