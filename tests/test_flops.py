"""The analytic FLOPs of `siglip.flops` against torch's own FlopCounterMode, the MFU arithmetic and
the peak's cache."""

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from siglip import flops
from siglip.config import ModelConfig, TowerConfig
from siglip.loss import sigmoid_loss, softmax_loss
from siglip.model import SigLIP


def counted(fn) -> int:
    """FLOPs torch counts while `fn` runs: the math attention backend, whose bmm it counts, and the
    in-place addmm_ the sigmoid loss accumulates its gradients with (not in torch's table)."""
    inplace = {torch.ops.aten.addmm_: lambda c, a, b, *args, **kwargs: 2 * a[0] * a[1] * b[1]}
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False, custom_mapping=inplace) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("text_head", [True, False])
def test_forward_flops_equal_the_counted_ones(text_head):
    # towers of different sizes and an embedding size of their own, so no term can stand in for another
    cfg = ModelConfig(
        variant="test",
        image=TowerConfig(48, 2, 80, 3),
        text=TowerConfig(32 if text_head else 48, 3, 64, 2),
        image_size=20,
        patch_size=4,
        text_length=7,
        vocab_size=50,
        embed_dim=0 if not text_head else 48,
        text_head=text_head,
    )
    model = SigLIP(cfg).eval()
    pixels, ids = torch.randn(3, 3, 20, 20), torch.randint(0, 50, (3, 7))
    model.requires_grad_(False)  # (not torch.no_grad: FlopCounterMode's module hooks trip on it)
    assert counted(lambda: model.image(pixels)) == 3 * flops.image_flops(cfg)
    assert counted(lambda: model.text(ids)) == 3 * flops.text_flops(cfg)


@pytest.mark.parametrize("loss", [sigmoid_loss, softmax_loss])
def test_training_step_flops_equal_the_counted_ones(tiny_config, loss):
    model = SigLIP(tiny_config)
    pixels, ids = torch.randn(5, 3, 16, 16), torch.randint(0, 64, (5, 8))

    def step():
        zimg, ztxt = model(pixels, ids)
        loss(zimg, ztxt, model.t, model.b).backward()

    assert counted(step) == flops.train_step_flops(tiny_config, 5)


def test_b16_figures():
    cfg = ModelConfig.from_variant("B/16")
    assert flops.image_flops(cfg) + flops.text_flops(cfg) == pytest.approx(46.44e9, rel=2e-3)
    assert flops.train_step_flops(cfg, 1) == pytest.approx(139.09e9, rel=2e-3)
    # a rank's loss covers its rows against the global batch
    assert flops.train_step_flops(cfg, 4, 16) - 4 * flops.train_step_flops(cfg, 1) == pytest.approx(
        6 * 4 * 16 * 768 - 4 * 6 * 768
    )


def test_mfu_and_the_peak_cache(tmp_path, monkeypatch):
    assert flops.mfu(2e12, 0.25, 1.0) == pytest.approx(0.5)
    assert flops.peak_tflops(torch.device("cpu"), torch.float32, given=12.5) == 12.5
    monkeypatch.setenv("SIGLIP_CACHE", str(tmp_path))
    measured = iter([0.17, 0.12, 0.20, 0.15])
    calls = []
    monkeypatch.setattr(flops, "measure_matmul_tflops", lambda d, t: calls.append(t) or next(measured))
    cpu = torch.device("cpu")
    assert flops.peak_tflops(cpu, torch.float32) == 0.17
    assert flops.peak_tflops(cpu, torch.float32) == 0.17  # cached: measured once
    assert calls == [torch.float32]
    (key,) = json.loads((tmp_path / "peak_tflops.json").read_text())
    assert "float32" in key and "threads" in key
    # fresh: this run's measurement is returned; the cache keeps the best one (a busy machine reads low)
    assert flops.peak_tflops(cpu, torch.float32, fresh=True) == 0.12
    assert flops.peak_tflops(cpu, torch.float32) == 0.17
    assert flops.peak_tflops(cpu, torch.float32, fresh=True) == 0.20
    assert flops.peak_tflops(cpu, torch.float32) == 0.20
    # an entry older than CACHE_DAYS (or in the older bare-number format) is measured again
    (tmp_path / "peak_tflops.json").write_text(json.dumps({key: 0.5}))
    assert flops.peak_tflops(cpu, torch.float32) == 0.15
    assert len(calls) == 4


def test_measured_matmul_peak_is_positive():
    assert 0 < flops.measure_matmul_tflops(torch.device("cpu"), torch.float32, size=128, seconds=0.05) < 1e3
