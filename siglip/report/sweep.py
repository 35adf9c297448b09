"""Sweeps for experiments/: train one run per setting with training/train.py, table the final numbers.

Each setting is a training run in its own process (`RUNS_DIR/<sweep>/<setting>/`, the ordinary run
files), so a sweep is exactly what a user would get by typing the commands one after another. A run
whose metrics.jsonl already ends with its final evaluation is reused, so an interrupted sweep picks
up where it stopped (`--fresh` retrains everything). The table is one row per setting: the
setting's values, then the final evaluation metrics and the last logged loss, t and b.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from siglip.report.runs import read_metrics

TRAIN_COLUMNS = ("loss", "t", "b")  # the last logged value of each, beside the final evaluation


@dataclass
class Setting:
    """One run of a sweep: `name` (its folder), `values` (its CSV columns), `args` (train.py flags)."""

    name: str
    values: dict[str, object]
    args: list[str] = field(default_factory=list)


def sweep_arguments(description: str, example: str) -> argparse.ArgumentParser:
    """The command line every experiments/ script shares."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog=f"example: {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-path", default="digits", help="training pairs (default: the bundled digits)")
    parser.add_argument("--runs-dir", default="runs/experiments", help="where each setting's run folder goes")
    parser.add_argument("--results-dir", default="", help="CSV, PNG and command go here (default: experiments/results)")
    parser.add_argument("--tiny", action="store_true", help="2 settings, 3 steps, 1 block per tower: a smoke test")
    parser.add_argument("--fresh", action="store_true", help="retrain settings whose runs already finished")
    parser.add_argument("--only", default="", help="train and table only the settings whose name contains this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    return parser


def tiny_args() -> list[str]:
    """The --tiny smoke-test size: a few steps of a one-block model."""
    return ["--config.model.image.depth=1", "--config.model.text.depth=1", "--config.optim.warmup_steps=1"]


def finished(run_dir: Path) -> bool:
    """True when the run's metrics end with the final evaluation (a row holding evaluation keys after
    the last training step)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return False
    rows = read_metrics(path)
    return bool(rows) and any("/" in k for k in rows[-1]) and any(run_dir.glob("siglip_*.pt"))


def train_command(repo: Path, config: Path, setting: Setting, run_dir: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        str(repo / "training" / "train.py"),
        "--config",
        str(config),
        "--output-dir",
        str(run_dir),
        *extra,
        *setting.args,
    ]


def run_setting(cmd: list[str], run_dir: Path, repo: Path) -> float:
    """Train one setting in its own process; returns its wall-clock seconds. Output goes to
    run_dir/train.log; a failure raises with the log's tail."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a half-finished run: start it again from scratch
    run_dir.mkdir(parents=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo), *filter(None, [env.get("PYTHONPATH", "")])])
    start = time.perf_counter()
    with open(run_dir / "train.log", "w") as logf:
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=repo)
    seconds = time.perf_counter() - start
    if proc.returncode:
        tail = (run_dir / "train.log").read_text()[-2000:]
        raise RuntimeError(f"run {run_dir} failed (exit {proc.returncode}):\n{tail}")
    (run_dir / "seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def summarize(run_dir: Path) -> dict[str, object]:
    """The final evaluation and the last logged training numbers of one finished run."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    last_eval = next(r for r in reversed(rows) if any("/" in k for k in r))
    last_train = next(r for r in reversed(rows) if "loss" in r)
    out: dict[str, object] = {"steps": last_train["step"]}
    out.update({k: v for k, v in last_eval.items() if "/" in k and not k.endswith("unreadable_images")})
    out.update({k: last_train.get(k, "") for k in TRAIN_COLUMNS})
    seconds = run_dir / "seconds.txt"
    out["seconds"] = float(seconds.read_text()) if seconds.is_file() else ""
    return out


def run_sweep(
    name: str,
    settings: list[Setting],
    repo: Path,
    config: Path,
    args: argparse.Namespace,
    extra: list[str],
) -> list[dict[str, object]]:
    """Train every setting (reusing finished runs unless --fresh), then write
    RESULTS/<name>.csv and RESULTS/<name>.cmd (the command that made it). Returns the CSV's rows."""
    results = Path(args.results_dir) if args.results_dir else repo / "experiments" / "results"
    results.mkdir(parents=True, exist_ok=True)
    base = [f"--data-path={args.data_path}", f"--config.train.seed={args.seed}"]
    base += [f"--config.{kv}" for kv in args.config] + extra + (tiny_args() if args.tiny else [])
    settings = [s for s in settings if args.only in s.name]  # --only: e.g. one half on another machine
    rows = []
    for i, setting in enumerate(settings):
        run_dir = Path(args.runs_dir).resolve() / name / setting.name
        cmd = train_command(repo, config, setting, run_dir, base)
        if args.fresh or not finished(run_dir):
            print(f"[{i + 1}/{len(settings)}] {setting.name}: training ({run_dir})", flush=True)
            seconds = run_setting(cmd, run_dir, repo)
            print(f"[{i + 1}/{len(settings)}] {setting.name}: done in {seconds:.0f} s", flush=True)
        else:
            print(f"[{i + 1}/{len(settings)}] {setting.name}: finished before, reused", flush=True)
        row = {"setting": setting.name, **setting.values, **summarize(run_dir)}
        rows.append(row)
        print("   " + json.dumps({k: v for k, v in row.items() if "/" in k}), flush=True)
    write_csv(results / f"{name}.csv", rows)
    command = " ".join(["python", *[a if " " not in a else repr(a) for a in sys.argv]])
    (results / f"{name}.cmd").write_text(command + "\n")
    return rows


def main_metric(rows: list[dict[str, object]]) -> str:
    """The metric a sweep's plot shows first: the first zero-shot top-1 accuracy in the table."""
    keys = [k for k in rows[0] if k.endswith("/acc1")] if rows else []
    if not keys:
        raise ValueError("the runs have no zero-shot evaluation (`<dataset>/acc1`): list one in the config's evals")
    return keys[0]


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    """Atomic CSV write; columns in first-seen order."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
