"""Sigmoid vs softmax loss across batch sizes (paper Fig. 2 and Table 5: the sigmoid loss is ahead
at small batches, the two meet as the batch grows). Every run sees the same number of examples.

    python experiments/loss_vs_batch.py          # 10 runs (2 losses x 5 batch sizes)
    -> experiments/results/loss_vs_batch.{csv,png,cmd}; the runs stay in runs/experiments/loss_vs_batch/
"""

from pathlib import Path

from siglip.report.plots import sweep
from siglip.report.sweep import Setting, main_metric, run_sweep, sweep_arguments

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "ablation_config.py"
NAME = "loss_vs_batch"
BATCH_SIZES = (16, 32, 64, 128, 256)
EPOCHS = 15  # of the 1,438 training digits: examples seen per run, the same for every batch size


def settings(tiny: bool) -> list[Setting]:
    out = []
    for loss in ("sigmoid", "softmax"):
        for bs in (8,) if tiny else BATCH_SIZES:
            steps = 3 if tiny else EPOCHS * 1438 // bs
            args = [f"--config.loss.name={loss}", f"--batch-size={bs}", f"--steps={steps}"]
            args.append(f"--config.optim.warmup_steps={max(1, steps // 10)}")
            out.append(Setting(f"{loss}_b{bs}", {"loss_name": loss, "batch_size": bs}, args))
    return out


def main() -> None:
    parser = sweep_arguments(__doc__.split("\n")[0], "python experiments/loss_vs_batch.py")
    args = parser.parse_args()
    rows = run_sweep(NAME, settings(args.tiny), REPO, CONFIG, args, [])
    png = sweep(
        rows,
        "batch_size",
        "loss_name",
        [main_metric(rows)],
        "sigmoid vs softmax, same examples seen",
        logx=True,
    )
    out = Path(args.results_dir) if args.results_dir else REPO / "experiments" / "results"
    (out / f"{NAME}.png").write_bytes(png)
    print(f"wrote {out / NAME}.csv, .png, .cmd")


if __name__ == "__main__":
    main()
