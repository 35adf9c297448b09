"""experiments/: each sweep end to end at a tiny size (2 settings, 3 steps of a one-block model),
and the sweep plumbing (which runs count as finished, what the table holds) on runs written here."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from siglip.report.sweep import finished, summarize, write_csv

from .conftest import REPO

SWEEPS = ["loss_vs_batch", "init_t_b", "negatives", "dropout"]


def fake_run(path, final_eval=True, model=True):
    path.mkdir(parents=True)
    rows = [{"step": 10, "loss": 3.0, "t": 9.0, "b": -9.5}, {"step": 20, "loss": 2.5, "t": 8.5, "b": -9.0}]
    if final_eval:
        rows.append({"step": 20, "digits/acc1": 0.75, "digits/mean_per_class_recall": 0.7})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if model:
        (path / "siglip_ablation.pt").write_bytes(b"")
    return path


def test_finished_runs_are_reused_and_tabled(tmp_path):
    assert finished(fake_run(tmp_path / "done"))
    assert not finished(fake_run(tmp_path / "no_eval", final_eval=False))
    assert not finished(fake_run(tmp_path / "killed_before_saving", model=False))
    row = summarize(tmp_path / "done")
    assert row["steps"] == 20 and row["digits/acc1"] == 0.75 and row["loss"] == 2.5 and row["b"] == -9.0
    write_csv(tmp_path / "t.csv", [{"setting": "a", **row}])
    with open(tmp_path / "t.csv") as f:
        (back,) = list(csv.DictReader(f))
    assert back["setting"] == "a" and float(back["digits/acc1"]) == 0.75


@pytest.mark.slow
@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_end_to_end_tiny(name, tmp_path):
    pytest.importorskip("matplotlib")
    results = tmp_path / "results"
    cmd = [sys.executable, str(REPO / "experiments" / f"{name}.py"), "--tiny", "--runs-dir", str(tmp_path / "runs"),
           "--results-dir", str(results), "--config", f"data.digits_root={tmp_path.parent / 'digits'}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    with open(results / f"{name}.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(0 <= float(r["digits/acc1"]) <= 1 for r in rows)
    assert all(int(r["steps"]) == 3 for r in rows)
    assert (results / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"experiments/{name}.py --tiny" in (results / f"{name}.cmd").read_text()
    # a second call reuses the finished runs
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert again.returncode == 0 and again.stdout.count("finished before, reused") == 2
