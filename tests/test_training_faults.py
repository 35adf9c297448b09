"""Faults inside a training run (the script, in this process): NaN/inf loss or gradients, NaN
weights, a full disk or a read-only output folder, a checkpoint from another world size."""

from __future__ import annotations

import errno
import json
import logging
import os
import runpy
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.modules.module import register_module_forward_hook
from torch.optim.optimizer import register_optimizer_step_post_hook

from siglip.checkpoint import read_resumable, step_checkpoint_path, step_checkpoints
from siglip.model import ImageTower
from siglip.train.guard import DivergenceError, DivergenceGuard, all_finite

from .test_kill_resume import CONFIG

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("fault_data")
    g = torch.Generator().manual_seed(0)
    lines = ["image,caption"]
    for i in range(16):
        Image.fromarray((torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()).save(root / f"{i}.png")
        lines.append(f"{i}.png,a photo of thing number {i % 7}")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    (root / "tiny_config.py").write_text(CONFIG)
    return root


def train(data: Path, out: Path, monkeypatch, *extra: str) -> None:
    args = ["training/train.py", "--config", str(data / "tiny_config.py"), "--data-path", str(data / "pairs.csv")]
    monkeypatch.setattr(sys, "argv", [*args, "--output-dir", str(out), "--config.train.keep_checkpoints=0", *extra])
    runpy.run_path(str(ROOT / "training/train.py"), run_name="__main__")


class nan_images:
    """The image tower returns NaN embeddings at these forward calls (1-based; one per step)."""

    def __init__(self, calls):
        self.calls, self.n = calls, 0

    def __enter__(self):
        def hook(module, args, output):
            if isinstance(module, ImageTower):
                self.n += 1
                if self.n in self.calls:
                    return output * float("nan")

        self.handle = register_module_forward_hook(hook)

    def __exit__(self, *exc):
        self.handle.remove()


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_nonfinite_steps_are_skipped_counted_and_logged(data, tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    with nan_images({3, 4}), caplog.at_level(logging.WARNING):
        train(data, out, monkeypatch, "--config.train.nonfinite_patience=3")
    assert "step 3: non-finite loss (nan); update skipped (1 in a row, 1 in all)" in caplog.text
    log = {r["step"]: r for r in rows(out)}
    assert [log[s].get("nonfinite_skipped", 0) for s in range(1, 7)] == [0, 0, 1, 2, 2, 2]
    final = state(out / "siglip_tiny.pt")["state_dict"]
    assert all(torch.isfinite(v).all() for v in final.values())
    # a skipped step changes nothing: the weights and Adam moments after step 4 are those after step 2
    two, four = state(step_checkpoint_path(out, 2)), state(step_checkpoint_path(out, 4))
    for k, v in two["state_dict"].items():
        assert torch.equal(four["state_dict"][k], v), k
    for name, s in two["optimizer"]["state"].items():
        assert torch.equal(four["optimizer"]["state"][name]["exp_avg"], s["exp_avg"]), name


def test_patience_consecutive_nonfinite_steps_stop_naming_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with nan_images(set(range(3, 100))), pytest.raises(DivergenceError) as err:
        train(data, out, monkeypatch, "--config.train.nonfinite_patience=3")
    assert "step 5: 3 steps in a row with a non-finite loss or gradient; stopping" in str(err.value)
    assert f"Last good checkpoint: {step_checkpoint_path(out, 4)} (step 4)" in str(err.value)
    assert not (out / "siglip_tiny.pt").exists()
    for p in step_checkpoints(out):
        assert all(torch.isfinite(v).all() for v in state(p)["state_dict"].values())


def test_nonfinite_weights_are_never_checkpointed(data, tmp_path, monkeypatch):
    out, updates = tmp_path / "run", [0]

    def poison(optimizer, args, kwargs):  # an update that itself goes non-finite (finite loss and grads)
        updates[0] += 1
        if updates[0] == 3:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].fill_(float("inf"))

    handle = register_optimizer_step_post_hook(poison)
    try:
        with pytest.raises(DivergenceError, match=r"step 4: non-finite weights in \[.*\]; not writing a checkpoint"):
            train(data, out, monkeypatch)
    finally:
        handle.remove()
    assert [p.name for p in step_checkpoints(out)] == ["checkpoint-00000002.pt"]
    assert read_resumable(out)[0]["step"] == 2


@pytest.mark.parametrize(
    "code, words", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")]
)
def test_full_disk_or_read_only_folder_fails_clearly_and_keeps_the_previous_checkpoint(
    data, tmp_path, monkeypatch, code, words
):
    out, real_save, saves = tmp_path / "run", torch.save, [0]

    def save(obj, f, *args, **kwargs):
        saves[0] += 1
        if saves[0] == 2:  # the checkpoint of step 4: a few bytes land, then the device refuses
            f.write(b"PK\x03\x04")
            raise OSError(code, os.strerror(code))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as err:
        train(data, out, monkeypatch)
    monkeypatch.setattr(torch, "save", real_save)
    assert err.value.errno == code
    assert f"cannot write checkpoint {step_checkpoint_path(out, 4)}: {words}" in str(err.value)
    assert f"The previous checkpoint {step_checkpoint_path(out, 2)} is intact" in str(err.value)
    payload, path = read_resumable(out)
    assert payload["step"] == 2 and path.name == "checkpoint.pt"
    assert not list(out.glob(".*.tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_really_read_only_folder(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(data, out, monkeypatch, "--steps", "2")
    out.chmod(0o555)
    try:
        with pytest.raises(OSError):
            train(data, out, monkeypatch, "--resume", "--steps", "4")
    finally:
        out.chmod(0o755)
    assert read_resumable(out)[0]["step"] == 2


def test_guard_unit(tiny_config):
    from siglip.model import SigLIP

    model = SigLIP(tiny_config)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e30)  # huge but finite: max-abs does not overflow like a sum of squares
    assert all_finite(torch.tensor(1.0), model)
    assert not all_finite(torch.tensor(float("inf")), model)
    model.image.patch_embed.weight.grad.view(-1)[5] = float("nan")
    assert not all_finite(torch.tensor(1.0), model)
    guard = DivergenceGuard(patience=2, step=7, last_good="ck.pt (step 7)")
    assert not guard.check(torch.tensor(float("nan")), model)
    assert guard.record() == {"nonfinite_skipped": 1}
    with pytest.raises(DivergenceError, match=r"step 9: 2 steps in a row.*Last good checkpoint: ck\.pt \(step 7\)"):
        guard.check(torch.tensor(1.0), model)
    with pytest.raises(ValueError, match="nonfinite_patience must be >= 1"):
        DivergenceGuard(patience=0)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_embed_on_a_full_disk_fails_clearly_and_keeps_the_previous_index(
    tmp_path, tokenizer, monkeypatch, capsys, code
):
    import numpy as np

    from siglip.cli import main
    from siglip.index import read_meta
    from tests.test_cli import save_tiny

    from .conftest import write_image

    model = save_tiny(tmp_path / "m.pt", tokenizer)
    for i in range(4):
        write_image(tmp_path / "photos" / f"{i}.png", (40 * i, 30, 30))
    args = ["embed", str(tmp_path / "photos"), "--model", str(model), "--out", str(tmp_path / "idx"), "--workers", "0"]
    assert main(args) == 0
    before = read_meta(tmp_path / "idx")
    rows = np.load(tmp_path / "idx" / before["embeddings"])
    write_image(tmp_path / "photos" / "new.png", (1, 2, 3))

    def refuse(f, *a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(np, "save", refuse)
    assert main(args) == 1
    message = capsys.readouterr().err
    assert f"siglip embed: error: cannot write the index {tmp_path / 'idx'}: {os.strerror(code)}" in message
    monkeypatch.undo()
    after = read_meta(tmp_path / "idx")
    assert after == before and np.array_equal(np.load(tmp_path / "idx" / after["embeddings"]), rows)
    assert not list((tmp_path / "idx").rglob(".*.tmp"))
