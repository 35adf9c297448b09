"""`python -m siglip.report`: runs read as written on disk (resumed logs, evaluations, per-example
outputs), every figure on the page, config differences highlighted, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from siglip.eval.datasets import ClassificationSet, RetrievalSet
from siglip.eval.retrieval import retrieval_outputs
from siglip.eval.zero_shot import zero_shot_outputs
from siglip.report.__main__ import main as report_main
from siglip.report.html import CURVES, build_report, config_section
from siglip.report.runs import RunError, load_run

from .conftest import REPO

pytest.importorskip("matplotlib")


def write_run(path, rows, config=None, outputs=None):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "config.json").write_text(json.dumps(config or {"optim": {"lr": 1e-3}, "train": {"seed": 0}}))
    for name, out in (outputs or {}).items():
        (path / "eval").mkdir(exist_ok=True)
        (path / "eval" / f"{name}.json").write_text(json.dumps(out))
    return path


def train_row(step, **kw):
    return {"step": step, "loss": 10.0 / step, "lr": 1e-3, "t": 10.0, "b": -10.0, "images_per_s": 50.0,
            "skipped": 0, "grad_norm": 1.0, **kw}  # fmt: skip


def test_crashed_and_resumed_log_keeps_the_last_rows():
    """A run killed at step 5 and resumed from its checkpoint at step 2 logs steps 3.. again."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        rows = [train_row(s) for s in (1, 2, 3, 4, 5)] + [train_row(s, loss=0.5) for s in (3, 4, 5, 6)]
        run = load_run(write_run(Path(d) / "r", rows))
    assert [r["step"] for r in run.train] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in run.train][2:] == [0.5] * 4  # the rows of the resumed run win
    assert run.resume_steps == [2]


def test_empty_or_missing_metrics_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="no metrics.jsonl"):
        load_run(tmp_path / "empty")
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(RunError, match="empty"):
        load_run(tmp_path / "empty")
    assert report_main([str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    assert "metrics.jsonl: empty" in capsys.readouterr().err
    from siglip.cli import main as siglip_main  # `siglip report` is the same command

    assert siglip_main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    assert "metrics.jsonl: empty" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
    bad = write_run(tmp_path / "bad", [train_row(1)])
    with open(bad / "metrics.jsonl", "a") as f:
        f.write("{oops\n" + json.dumps(train_row(2)) + "\n")
    with pytest.raises(RunError, match=r"metrics.jsonl:2: not a JSON object"):
        load_run(bad)


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path / "r", [train_row(1)])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert report_main([str(run), "--out", str(tmp_path / "r.html")]) == 2
    assert "pip install 'siglip[report]'" in capsys.readouterr().err


def test_configs_side_by_side_highlight_the_differences(tmp_path):
    a = load_run(write_run(tmp_path / "a", [train_row(1)], {"optim": {"lr": 1e-3}, "train": {"seed": 0}}))
    b = load_run(write_run(tmp_path / "b", [train_row(1)], {"optim": {"lr": 5e-4}, "train": {"seed": 0}}))
    page = config_section([a, b])
    assert "<tr class=diff><td>optim.lr</td><td>0.001</td><td>0.0005</td></tr>" in page
    assert "<tr><td>train.seed</td><td>0</td><td>0</td></tr>" in page


def test_worst_classes_and_confusion_counts(tmp_path):
    """Per-class recall from the per-example file equals a direct count."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (60,), generator=g)
    scores = torch.randn(60, 4, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, 4)
    ok = torch.ones(60, dtype=torch.bool)
    ok[7] = False
    data = ClassificationSet(images=[f"{i}.png" for i in range(60)], labels=labels.tolist(),
                             classnames=["zero", "one", "two", "three"], templates=["{}"])  # fmt: skip
    out = {**zero_shot_outputs(scores, ok, data), "step": 5}
    assert out["predictions"][7] == -1 and out["predictions"][0] == int(scores[0].argmax())
    run = load_run(write_run(tmp_path / "r", [train_row(5)], outputs={"digits_zero_shot": out}))
    page, drawn = build_report([run])
    assert "digits_zero_shot confusion matrix" in drawn
    pred = scores.argmax(1).masked_fill(~ok, -1)
    recall = {
        c: float(((pred == labels) & (labels == k)).sum() / (labels == k).sum()) for k, c in enumerate(data.classnames)
    }
    worst = min(recall, key=recall.get)
    assert f"<tr><td>{worst}</td><td>{recall[worst]:.3f}</td>" in page


def test_retrieval_outputs_are_the_top_images(tmp_path):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 12, generator=g)  # 6 images, 2 captions each
    ok = torch.ones(6, dtype=torch.bool)
    ok[2] = False
    data = RetrievalSet(images=[str(tmp_path / f"{i}.png") for i in range(6)], texts=[f"t{j}" for j in range(12)],
                        image_of_text=[j // 2 for j in range(12)])  # fmt: skip
    out = retrieval_outputs(scores, ok, data, queries=4, k=3)
    assert [q["text"] for q in out["queries"]] == ["t0", "t4", "t7", "t11"]
    for q in out["queries"]:
        j = int(q["text"][1:])
        col = scores[:, j].masked_fill(~ok, float("-inf"))
        assert [h["image"] for h in q["top"]] == [data.images[i] for i in col.argsort(descending=True)[:3].tolist()]
        assert data.images[2] not in [h["image"] for h in q["top"]]
        assert q["target"] == data.images[j // 2]


# --------------------------------------------------------------------------------------------------
# End to end: two real runs of training/train.py (one resumed, one with zero-shot + retrieval
# evaluators and TensorBoard), then the command.

EVAL_CONFIG = """
from pathlib import Path
from siglip.config import EvalConfig, load_config_file

def get_config():
    cfg = load_config_file(Path({demo!r}))
    cfg.evals = [EvalConfig(dataset="digits"), EvalConfig(dataset="digits", task="retrieval")]
    return cfg
"""
FAST = ["--config.model.image.depth=1", "--config.model.text.depth=1", "--config.train.log_every=1",
        "--config.data.num_workers=0", "--config.optim.warmup_steps=1", "--batch-size", "32", "--steps", "4"]  # fmt: skip


def train(tmp_path, config, out, *extra):
    cmd = [sys.executable, str(REPO / "training/train.py"), "--config", str(config), "--output-dir", str(out),
           f"--config.data.digits_root={tmp_path / 'digits'}", *FAST, *extra]  # fmt: skip
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_report_of_a_resumed_run_and_an_evaluated_run(tmp_path):
    pytest.importorskip("tensorboard")  # the `tensorboard` extra, installed by `make test`
    demo = REPO / "configs/demo_config.py"
    resumed, evaluated = tmp_path / "resumed", tmp_path / "evaluated"
    train(tmp_path, demo, resumed, "--config.train.stop_at_step=2")
    train(tmp_path, demo, resumed, "--resume")
    config = tmp_path / "eval_config.py"
    config.write_text(EVAL_CONFIG.format(demo=str(demo)))
    train(tmp_path, config, evaluated, "--learning-rate=5e-4", "--config.log.tensorboard=true")

    out = tmp_path / "report.html"
    cmd = [sys.executable, "-m", "siglip.report", str(resumed), str(evaluated), "--out", str(out), "--json"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(REPO)}
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    page = out.read_text()
    for _, title, _, _ in CURVES:
        assert title in summary["figures"]
    for key in ("digits/acc1", "digits/image_retrieval_recall@1", "digits_zero_shot confusion matrix",
                "digits_retrieval retrieval examples"):  # fmt: skip
        assert key in summary["figures"]
    assert page.count("data:image/png;base64,") >= len(CURVES) + 10  # figures and thumbnails inline
    assert "<tr class=diff><td>optim.lr</td>" in page and "resumed" in page
    assert load_run(resumed).resume_steps == [2]
    assert [r["step"] for r in load_run(resumed).train] == [1, 2, 3, 4]

    # TensorBoard got exactly the scalars of metrics.jsonl
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(evaluated / "tensorboard"))
    acc.Reload()
    rows = [json.loads(line) for line in (evaluated / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "t", "b", "lr", "grad_norm", "digits/acc1"):
        expect = [(r["step"], r[key]) for r in rows if key in r]
        got = [(e.step, e.value) for e in acc.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in expect]
        assert [v for _, v in got] == pytest.approx([v for _, v in expect], rel=1e-6)
