"""Initialisation of the temperature t = exp(t') and the bias b (paper Sec. 4.5 and Table 4: t' = log 10,
b = -10 starts the sigmoid loss near its heavily-negative prior and trains best; b = 0 starts every
pair at probability 1/2, and the first steps go into pushing the n^2 - n negatives down).

    python experiments/init_t_b.py               # 5 runs
    -> experiments/results/init_t_b.{csv,png,cmd}; the runs stay in runs/experiments/init_t_b/
"""

import math
from pathlib import Path

from siglip.report.plots import sweep
from siglip.report.sweep import Setting, main_metric, run_sweep, sweep_arguments

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "ablation_config.py"
NAME = "init_t_b"
INITS = ((10.0, -10.0), (10.0, 0.0), (1.0, 0.0), (1.0, -10.0), (10.0, -5.0))  # (t, b) at step 0
STEPS = 337  # 15 epochs of the 1,438 training digits at batch 64


def settings(tiny: bool) -> list[Setting]:
    out = []
    for t, b in INITS[:2] if tiny else INITS:
        args = [f"--config.model.init_t_prime={math.log(t)!r}", f"--config.model.init_b={b}"]
        args += [f"--steps={3 if tiny else STEPS}", f"--config.optim.warmup_steps={1 if tiny else STEPS // 10}"]
        out.append(Setting(f"t{t:g}_b{b:g}", {"init": f"t={t:g}, b={b:g}", "init_t": t, "init_b": b}, args))
    return out


def main() -> None:
    parser = sweep_arguments(__doc__.split("\n")[0], "python experiments/init_t_b.py")
    args = parser.parse_args()
    rows = run_sweep(NAME, settings(args.tiny), REPO, CONFIG, args, [])
    png = sweep(
        rows, "init", None, [main_metric(rows), "loss", "t", "b"], "initial t and b (final values on the right)"
    )
    out = Path(args.results_dir) if args.results_dir else REPO / "experiments" / "results"
    (out / f"{NAME}.png").write_bytes(png)
    print(f"wrote {out / NAME}.csv, .png, .cmd")


if __name__ == "__main__":
    main()
