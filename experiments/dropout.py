"""Dropout on and off (`model.dropout`, on each block's attention and MLP), with and without the demo's
augmentation. The paper trains without dropout; this checks whether a small model on a small data
set, which overfits, gains from it.

    python experiments/dropout.py                # 4 runs (dropout 0 / 0.1, augmentation on / off)
    -> experiments/results/dropout.{csv,png,cmd}; the runs stay in runs/experiments/dropout/
"""

from pathlib import Path

from siglip.report.plots import sweep
from siglip.report.sweep import Setting, main_metric, run_sweep, sweep_arguments

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "ablation_config.py"
NAME = "dropout"
STEPS = 337  # 15 epochs of the 1,438 training digits at batch 64 (the demo trains 30)
NO_AUGMENTATION = ["--config.data.random_resized_crop=false", "--config.data.color_jitter=0"]


def settings(tiny: bool) -> list[Setting]:
    steps = [f"--steps={3 if tiny else STEPS}", f"--config.optim.warmup_steps={1 if tiny else STEPS // 10}"]
    out = []
    for augment in (True, False):
        for p in (0.0, 0.1):
            args = [f"--config.model.dropout={p}", *steps, *([] if augment else NO_AUGMENTATION)]
            label = "augmentation" if augment else "no augmentation"
            out.append(Setting(f"p{p:g}_{'aug' if augment else 'noaug'}", {"dropout": p, "data": label}, args))
    return out[:2] if tiny else out


def main() -> None:
    parser = sweep_arguments(__doc__.split("\n")[0], "python experiments/dropout.py")
    args = parser.parse_args()
    rows = run_sweep(NAME, settings(args.tiny), REPO, CONFIG, args, [])
    png = sweep(rows, "dropout", "data", [main_metric(rows), "loss"], "dropout on attention and MLP")
    out = Path(args.results_dir) if args.results_dir else REPO / "experiments" / "results"
    (out / f"{NAME}.png").write_bytes(png)
    print(f"wrote {out / NAME}.csv, .png, .cmd")


if __name__ == "__main__":
    main()
