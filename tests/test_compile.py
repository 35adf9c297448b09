"""torch.compile (train.compile) gives the eager losses, and falls back to eager when it cannot work."""

import copy

import pytest
import torch

from siglip.compile import CompiledOrEager, compile_or_eager, compile_unavailable
from siglip.config import OptimConfig
from siglip.loss import sigmoid_loss
from siglip.model import SigLIP
from siglip.optim import build_optimizer


def train_losses(forward, model, steps=3) -> list[float]:
    torch.manual_seed(1)
    opt = build_optimizer(model, OptimConfig(lr=1e-3, warmup_steps=0))
    losses = []
    for _ in range(steps):
        pixels, ids = torch.randn(4, 3, 16, 16), torch.randint(0, 64, (4, 8))
        opt.zero_grad(set_to_none=True)
        zimg, ztxt = forward(pixels, ids)
        loss = sigmoid_loss(zimg, ztxt, model.t, model.b)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_compiled_training_gives_the_eager_losses(tiny_config):
    why = compile_unavailable(torch.device("cpu"))
    if why:
        pytest.skip(why)
    torch.manual_seed(0)
    eager = SigLIP(tiny_config)
    compiled_model = copy.deepcopy(eager)
    compiled = compile_or_eager(compiled_model, True, torch.device("cpu"))
    assert isinstance(compiled, CompiledOrEager)
    want = train_losses(eager, eager)
    got = train_losses(compiled, compiled_model)
    assert compiled.compiled is not None, "compiling failed: the run fell back to eager"
    assert got == pytest.approx(want, abs=1e-5, rel=0)


def test_a_failing_compile_falls_back_to_eager(tiny_config, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    model = SigLIP(tiny_config)
    wrapped = CompiledOrEager(model)
    wrapped.compiled = broken
    pixels, ids = torch.randn(2, 3, 16, 16), torch.randint(0, 64, (2, 8))
    for z, w in zip(wrapped(pixels, ids), model(pixels, ids)):
        torch.testing.assert_close(z, w, atol=0, rtol=0)
    assert wrapped.compiled is None and "running eagerly" in caplog.text
    assert list(wrapped.module.state_dict()) == list(model.state_dict())
    # asked for where it cannot work: the module itself, with the reason logged
    monkeypatch.setattr("siglip.compile.compile_unavailable", lambda device: "no C++ compiler")
    assert compile_or_eager(model, True, torch.device("cpu")) is model
    assert compile_or_eager(model, False, torch.device("cpu")) is model
