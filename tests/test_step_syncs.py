"""No host sync in a training step: the loss takes t as a tensor, the divergence guard's flag stays on
the device (the fused AdamW skips a non-finite step there) and is read at logged steps only.

On the CPU, a dispatch mode records every op that would make the host wait for a GPU (a scalar
read: `.item()`, `float(t)`, `bool(t)`, `if t:`; a data-dependent shape: `nonzero`, indexing by a
mask, ...) while `train_step` runs. Where CUDA is present, the same steps run on it under
`torch.cuda.set_sync_debug_mode("error")`."""

from __future__ import annotations

import contextlib
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from siglip.config import Config, ModelConfig
from siglip.distributed import Runtime
from siglip.loss import loss_from_config
from siglip.model import SigLIP
from siglip.naflex import NaFlexPatches
from siglip.optim import build_optimizer, build_scheduler, step_unless
from siglip.train.guard import DivergenceError, DivergenceGuard
from siglip.train.loop import Meter, train_step

from .test_training_faults import data, nan_images, rows, train  # noqa: F401 - `data` is a fixture

aten = torch.ops.aten
SCALAR_READS = {aten._local_scalar_dense.default, aten.item.default}
DATA_DEPENDENT = {aten.nonzero, aten.nonzero_static, aten.masked_select, aten.bincount, aten._unique2, aten.unique_dim}


class HostReads(TorchDispatchMode):
    """Records the ops that wait for the device, each with the siglip line that called it."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        indices = args[1] if func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default) else ()
        by_mask = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())
        if func in SCALAR_READS or func.overloadpacket in DATA_DEPENDENT or by_mask:
            where = [
                f"{f.filename.split('/siglip/')[-1]}:{f.lineno}"
                for f in traceback.extract_stack()
                if "/siglip/" in f.filename
            ]
            self.seen.append(f"{func} at {where[-1] if where else '?'}")
        return func(*args, **(kwargs or {}))


def setup(device: str, **overrides):
    cfg = Config()
    cfg.model = ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=64)
    cfg.train.peak_tflops = 1.0  # no peak measurement (it times matmuls)
    cfg.optim.warmup_steps = 1
    for key, value in overrides.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    torch.manual_seed(0)
    model = SigLIP(cfg.model).to(device).train()
    rt = Runtime(device=torch.device(device))
    optimizer = build_optimizer(model, cfg.optim)
    parts = (model, loss_from_config(cfg.loss), optimizer, build_scheduler(optimizer, cfg.optim, 10), cfg, rt)
    return parts, Meter(rt, cfg), DivergenceGuard(patience=5)


def batch(step: int, naflex: bool) -> dict:
    """8 pairs as the data loader gives them (on the host); step 1 holds a NaN."""
    g = torch.Generator().manual_seed(step)
    if naflex:  # 4x4 patches of 4x4 px at most, images of three shapes
        shapes = torch.tensor([[4, 4], [2, 3], [3, 5], [1, 1]] * 2)
        mask = torch.arange(16)[None, :] < shapes.prod(-1)[:, None]  # (8, 16): real patches first
        pixels = NaFlexPatches((torch.rand(8, 16, 48, generator=g) * 2 - 1) * mask[..., None], mask, shapes)
        pixels.patches[0, 0, 0] = float("nan") if step == 1 else pixels.patches[0, 0, 0]
    else:
        pixels = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
        pixels[0, 0, 0, 0] = float("nan") if step == 1 else pixels[0, 0, 0, 0]  # a skipped step: the same path
    return {"pixels": pixels, "ids": torch.randint(0, 64, (8, 8), generator=g), "skipped": 0}


def run_steps(device: str, mode, **overrides) -> DivergenceGuard:
    (model, loss, optimizer, scheduler, cfg, rt), meter, guard = setup(device, **overrides)
    for step in range(3):
        b = batch(step, cfg.model.naflex)
        with mode:
            train_step(b, model, model, loss, optimizer, scheduler, cfg, rt, contextlib.nullcontext, meter, guard)
    guard.poll()  # a logged step: the host reads the flags now
    return guard


CASES = {
    "plain": {},
    "clip_and_tiles": {"optim__grad_clip": 1.0, "loss__tile": 4},
    "micro_batches": {"train__micro_batch_size": 4},
    "hard_negatives": {"loss__negatives": "hard", "loss__negative_ratio": 0.5},
    "random_negatives": {"loss__negatives": "random", "loss__negative_ratio": 0.5},
    "naflex": {"model__naflex": True},  # its spatial shapes stay on the host
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_training_step_reads_nothing_to_the_host(case):
    mode = HostReads()
    guard = run_steps("cpu", mode, **CASES[case])
    assert mode.seen == []
    assert guard.skipped == 1 and guard.record() == {"nonfinite_skipped": 1}  # the NaN step, seen at the poll


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", list(CASES))
def test_a_training_step_on_cuda_never_syncs(case):
    torch.cuda.set_sync_debug_mode("error")
    try:
        guard = run_steps("cuda", contextlib.nullcontext(), **CASES[case])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert guard.skipped == 1


def test_the_detector_sees_the_syncs_it_should():
    """The dispatch mode itself: a scalar read and a selection by mask are caught, arithmetic is not."""
    x = torch.randn(4)
    with HostReads() as mode:
        _ = (x * 2).sum()
        float(x.sum())
        _ = x[x > 0]
        bool(x.isfinite().all())
    assert len(mode.seen) == 3, mode.seen


@pytest.mark.parametrize("fused", [True, False])  # fused AdamW skips on the device; SGD reads the flag
def test_step_unless_skips_a_flagged_step_and_otherwise_steps_exactly(fused):
    def make(ps):
        if fused:
            return torch.optim.AdamW(ps, lr=0.1, weight_decay=0.1, fused=True)
        return torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1)

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(6, 5)) for _ in range(3)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    a, b = make(params), make(twins)
    for _ in range(3):
        for p, q in zip(params, twins):
            p.grad = torch.randn(6, 5)
            q.grad = p.grad.clone()
        step_unless(a, torch.tensor(0.0))
        b.step()
        assert all(torch.equal(p, q) for p, q in zip(params, twins))  # flag 0: the plain step, bit for bit
    before = [p.detach().clone() for p in params]
    state = [{k: v.clone() for k, v in a.state[p].items()} for p in params]
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    step_unless(a, torch.tensor(1.0))
    assert all(torch.equal(p, w) for p, w in zip(params, before))  # no update, no weight decay
    for p, s in zip(params, state):
        assert all(torch.equal(a.state[p][k], v) for k, v in s.items())  # moments and step count kept
    assert not hasattr(a, "found_inf")


def test_poll_reports_a_run_of_nonfinite_steps_at_the_next_logged_step(tiny_config):
    model = SigLIP(tiny_config)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    guard = DivergenceGuard(patience=2, step=10, last_good="ck.pt (step 10)")
    flags = [guard.observe(torch.tensor(v), model) for v in (1.0, float("nan"), float("inf"), 2.0)]
    assert [f.item() for f in flags] == [0.0, 1.0, 1.0, 0.0]  # what the optimizer is handed
    assert guard.skipped == 0  # nothing read yet
    with pytest.raises(DivergenceError) as err:
        guard.poll()  # at step 14: the run of two reached patience at step 13
    assert "step 13: 2 steps in a row with a non-finite loss or gradient; stopping (read at step 14)" in str(err.value)
    assert "Last good checkpoint: ck.pt (step 10)" in str(err.value)


def test_patience_is_caught_at_the_next_logged_step_naming_the_last_good_checkpoint(data, tmp_path, monkeypatch):  # noqa: F811
    """log_every 3: steps 4 and 5 go NaN (patience 2, reached at step 5); step 6 reads it and stops;
    the checkpoint of step 3 is the last good one (none is written after the run began)."""
    out = tmp_path / "run"
    extra = ["--config.train.log_every=3", "--config.train.checkpoint_every=3", "--config.train.nonfinite_patience=2"]
    with nan_images({4, 5}), pytest.raises(DivergenceError) as err:
        train(data, out, monkeypatch, *extra)
    assert "step 5: 2 steps in a row with a non-finite loss or gradient; stopping (read at step 6)" in str(err.value)
    assert f"Last good checkpoint: {out / 'checkpoint-00000003.pt'} (step 3)" in str(err.value)
    assert [r["step"] for r in rows(out) if "loss" in r] == [3]
