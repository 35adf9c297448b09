"""Reports on training runs and the paper's ablations as sweeps.

runs.py reads a run folder (metrics.jsonl, config.json, eval/*.json) with no heavy imports; plots.py
draws PNG figures with matplotlib (the `report` extra, imported when a figure is drawn); html.py
puts them on one self-contained page (`python -m siglip.report RUN_DIR ... --out report.html`);
sweep.py trains one run per setting of an experiments/ script and tables the results. (Sending the
scalars to TensorBoard or Weights & Biases during training is siglip.train.loggers.)
"""

from siglip.report.runs import Run, RunError, load_run

__all__ = ["Run", "RunError", "load_run"]
