"""Golden losses: 20 steps of the tiny demo model from a fixed seed must give the recorded loss, t
and b at every step, so a refactor that should not change the maths cannot drift silently.

Four runs of training/train.py (one thread each, so the float sums happen in one order): one
process with the whole batch as one tile; the sigmoid loss in 8x8 tiles; exact gradient
accumulation in micro-batches of 8; two gloo processes under torchrun (the ring loss, DDP).
The numbers live in tests/golden_losses.json. A change that moves them on purpose re-records them
in its own commit, saying why:

    SIGLIP_RECORD_GOLDEN=1 python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO

GOLDEN = REPO / "tests" / "golden_losses.json"
STEPS = 20
TOLERANCE = 1e-5
COMMON = [
    "--config",
    str(REPO / "configs/demo_config.py"),
    "--steps",
    str(STEPS),
    "--batch-size",
    "32",
    "--config.model.image.depth=1",
    "--config.model.text.depth=1",
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=0",
    "--config.data.num_workers=0",
    "--config.optim.warmup_steps=5",  # of the 20 steps: the lr peaks, then decays
]
RUNS = {
    "one_process": [],
    "tiles_of_8": ["--config.loss.tile=8"],
    "micro_batches_of_8": ["--config.train.micro_batch_size=8"],
    "two_gloo_processes": None,  # torchrun, below
}


def run_training(name: str, out, digits) -> list[dict]:
    script = str(REPO / "training/train.py")
    args = [*COMMON, "--output-dir", str(out), f"--config.data.digits_root={digits}"]
    if RUNS[name] is None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, *args]
    else:
        cmd = [sys.executable, script, *args, *RUNS[name]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("step", "loss", "t", "b")} for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def golden() -> dict:
    if os.environ.get("SIGLIP_RECORD_GOLDEN"):
        return {}
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", list(RUNS))
def test_golden_losses(name, golden, tmp_path_factory):
    root = tmp_path_factory.getbasetemp()
    got = run_training(name, tmp_path_factory.mktemp(name) / "run", root / "digits")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    if os.environ.get("SIGLIP_RECORD_GOLDEN"):
        recorded = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        recorded[name] = got
        lines = ",\n".join(
            f"  {json.dumps(k)}: [\n" + ",\n".join(f"    {json.dumps(r)}" for r in v) + "\n  ]"
            for k, v in recorded.items()
        )
        GOLDEN.write_text("{\n" + lines + "\n}\n")
        pytest.skip(f"recorded {name} in {GOLDEN.name}")
    want = golden[name]
    for g, w in zip(got, want):
        for key in ("loss", "t", "b"):
            assert g[key] == pytest.approx(w[key], abs=TOLERANCE, rel=0), f"{name} step {g['step']} {key}"
