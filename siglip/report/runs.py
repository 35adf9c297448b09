"""A training run as written on disk: `metrics.jsonl`, `config.json` and, from the final evaluation,
`eval/*.json` (per-example outputs, see siglip.eval.evaluators). Reading only: no matplotlib, no torch."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class RunError(ValueError):
    """A run folder that cannot be reported on; the message names the file and what is wrong."""


@dataclass
class Run:
    """One run. `train`: training rows (step, loss, lr, t, b, ...), one per step, the last written
    wins (a resumed run logs again the steps after its last checkpoint). `evals`: evaluation rows
    (step plus `<dataset>/<metric>` keys), merged per step. `outputs`: per-example files by name."""

    name: str
    path: Path
    config: dict
    train: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    outputs: dict[str, dict] = field(default_factory=dict)
    resume_steps: list[int] = field(default_factory=list)  # where the log went back: a resume


def read_metrics(path: str | Path) -> list[dict]:
    """Every JSON line of a metrics.jsonl; a malformed line fails naming FILE:LINE. A last line cut
    short by a crash is skipped."""
    path = Path(path)
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):  # a crash mid-write: the rest of the file is good
                break
            raise RunError(f"{path}:{i}: not a JSON object ({e.msg})") from None
        if not isinstance(row, dict) or "step" not in row:
            raise RunError(f"{path}:{i}: a metrics row must be a JSON object with a 'step'")
        rows.append(row)
    return rows


def load_run(path: str | Path, name: str = "") -> Run:
    """Read a run folder. A folder without metrics.jsonl (or with no rows in it) raises RunError."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: not a folder (give the run's --output-dir)")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise RunError(f"{path}: no metrics.jsonl: not a training run folder, or the run logged nothing yet")
    rows = read_metrics(metrics)
    if not rows:
        raise RunError(f"{metrics}: empty: the run logged nothing yet")
    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    resume_steps, last_step = [], -1
    for row in rows:
        step = int(row["step"])
        if row.get("resumed"):  # written by training/train.py --resume
            resume_steps.append(step)
        if "loss" in row:
            if step <= last_step and step - 1 not in resume_steps:  # logged again: resumed from an earlier checkpoint
                resume_steps.append(step - 1)
            last_step = step
            train[step] = row
        scores = {k: v for k, v in row.items() if "/" in k}
        if scores:
            evals.setdefault(step, {"step": step}).update(scores)
    outputs = {}
    for f in sorted((path / "eval").glob("*.json")) if (path / "eval").is_dir() else []:
        outputs[f.stem] = json.loads(f.read_text())
    return Run(
        name=name or path.resolve().name,
        path=path,
        config=config,
        train=[train[s] for s in sorted(train)],
        evals=[evals[s] for s in sorted(evals)],
        outputs=outputs,
        resume_steps=resume_steps,
    )


def unique_names(paths: list[Path]) -> list[str]:
    """Short labels for runs: the folder name, with its parent's added where two folders share one."""
    names = [p.resolve().name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.resolve().parent.name}/{p.resolve().name}" for p in paths]


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}; lists of sections as `evals[0].dataset`."""
    out: dict[str, object] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out.update(flatten(x, f"{key}[{i}]."))
        else:
            out[key] = v
    return out
