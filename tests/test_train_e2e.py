"""The training script end to end on the demo config (a few steps), saving, loading, resuming."""

import json
import subprocess
import sys

import pytest
import torch

import siglip
from siglip.config import EvalConfig
from siglip.eval.evaluators import run_evals

from .conftest import REPO

FAST = [
    "--config.model.image.depth=1",
    "--config.model.text.depth=1",
    "--config.model.image_size=16",
    "--config.train.log_every=1",
    "--config.data.num_workers=1",
    "--config.optim.warmup_steps=2",  # no longer than these short runs (validate refuses more)
    "--batch-size",
    "32",
]


def train(tmp_path, out, *extra):
    cmd = [
        sys.executable,
        str(REPO / "training/train.py"),
        "--config",
        str(REPO / "configs/demo_config.py"),
        "--output-dir",
        str(out),
        f"--config.data.digits_root={tmp_path.parent / 'digits'}",
        *FAST,
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def losses(out):
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_demo_trains_saves_loads_and_evaluates(tmp_path):
    out = tmp_path / "run"
    proc = train(tmp_path, out, "--steps", "6")
    model_file = out / "siglip_demo.pt"
    assert model_file.is_file() and (out / "config.json").is_file() and (out / "checkpoint.pt").is_file()
    ls = losses(out)
    assert len(ls) == 6 and 5 < ls[0] < 20  # about 10 at initialisation (t=10, b=-10): sum over n^2 / n
    printed = dict(line.split(": ") for line in proc.stdout.splitlines() if line.startswith("digits/"))
    assert set(printed) >= {"digits/acc1", "digits/acc5", "digits/mean_per_class_recall"}

    payload = torch.load(model_file, weights_only=True)  # no pickled code needed
    assert payload["format"] == "siglip" and payload["tokenizer"]["proto"].dtype == torch.uint8
    model = siglip.load(model_file)
    ids = model.tokenizer(["a handwritten seven", "digit 3"])
    assert ids.shape == (2, 16)
    from PIL import Image

    pixels = model.preprocess(Image.new("L", (32, 32), 255))[None]
    assert pixels.shape == (1, 3, 16, 16)
    zimg, ztxt = model.encode_image(pixels), model.encode_text(ids)
    torch.testing.assert_close(zimg.norm(dim=-1), torch.ones(1))
    assert model.logits(zimg, ztxt).shape == (1, 2) and model.t.item() > 0
    # the loaded model reproduces the evaluation printed at the end of training
    again = run_evals([EvalConfig("digits")], model, model.tokenizer, 16, "bicubic", str(tmp_path.parent / "digits"), 0)
    assert f"{again['digits/acc1']:.4f}" == printed["digits/acc1"]


def test_resume_reproduces_the_uninterrupted_losses(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--steps", "8", "--config.train.checkpoint_every=2", "--config.train.seed=1"]
    train(tmp_path, straight, *common)
    train(tmp_path, resumed, *common, "--config.train.stop_at_step=5")
    assert not (resumed / "siglip_demo.pt").exists()
    assert len(losses(resumed)) == 5
    train(tmp_path, resumed, *common, "--resume")
    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-6, abs=1e-7)
    assert (resumed / "siglip_demo.pt").is_file()


def test_unknown_config_key_fails_before_training(tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "training/train.py"),
        "--config",
        str(REPO / "configs/demo_config.py"),
        "--config.optim.lrr=1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0 and "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)" in proc.stderr
