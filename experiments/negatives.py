"""Negative sampling in the sigmoid loss (paper Fig. 6): keep a fraction of each image's negatives,
chosen at random, the hardest (highest logits) or the easiest. The paper finds that removing
negatives hurts, easy ones most, and that hard negatives help only when the batch is rebuilt around
them; here the batch is fixed and only the kept pairs change.

    python experiments/negatives.py              # 7 runs (all, then 3 kinds x 2 ratios)
    -> experiments/results/negatives.{csv,png,cmd}; the runs stay in runs/experiments/negatives/
"""

from pathlib import Path

from siglip.report.plots import sweep
from siglip.report.sweep import Setting, main_metric, run_sweep, sweep_arguments

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "ablation_config.py"
NAME = "negatives"
RATIOS = (0.5, 0.1)
STEPS = 337  # 15 epochs of the 1,438 training digits at batch 64


def settings(tiny: bool) -> list[Setting]:
    steps = [f"--steps={3 if tiny else STEPS}", f"--config.optim.warmup_steps={1 if tiny else STEPS // 10}"]
    out = []
    for kind in ("random", "hard", "easy"):
        out.append(Setting(f"{kind}_1", {"negatives": kind, "ratio": 1.0}, steps))  # 1.0 keeps all: one run
        for r in RATIOS[:1] if tiny else RATIOS:
            args = [f"--config.loss.negatives={kind}", f"--config.loss.negative_ratio={r}", *steps]
            out.append(Setting(f"{kind}_{r:g}", {"negatives": kind, "ratio": r}, args))
    # ratio 1 is the same run for every kind: train it once, table it under each kind for the plot
    first = out[0]
    for s in out:
        if s.values["ratio"] == 1.0:
            s.name, s.args = first.name.replace("random", "all"), first.args
    return out[:2] if tiny else out


def main() -> None:
    parser = sweep_arguments(__doc__.split("\n")[0], "python experiments/negatives.py")
    args = parser.parse_args()
    rows = run_sweep(NAME, settings(args.tiny), REPO, CONFIG, args, [])
    png = sweep(rows, "ratio", "negatives", [main_metric(rows), "b"], "fraction of negatives kept", logx=False)
    out = Path(args.results_dir) if args.results_dir else REPO / "experiments" / "results"
    (out / f"{NAME}.png").write_bytes(png)
    print(f"wrote {out / NAME}.csv, .png, .cmd")


if __name__ == "__main__":
    main()
