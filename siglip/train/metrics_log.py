"""Training progress: `metrics.jsonl` (one JSON object per logged step) plus a tqdm bar on a
terminal or plain log lines otherwise, and the same scalars to optional sinks (siglip.train.loggers:
TensorBoard, Weights & Biases)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from siglip.train.loggers import scalars_of


class MetricsLog:
    def __init__(
        self, path: str | Path, total_steps: int, start_step: int, enabled: bool = True, sinks: list | None = None
    ):
        self.enabled = enabled
        self.sinks = sinks or []
        self.tty = sys.stderr.isatty()
        self.file = open(path, "a") if enabled else None
        self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True) if enabled and self.tty else None

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def write(self, record: dict) -> None:
        """Append a record (must contain "step") and show it."""
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for sink in self.sinks:
            sink.write(int(record["step"]), scalars_of(record))
        short = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in record.items() if k != "step"}
        if self.bar is not None:
            self.bar.set_postfix(short, refresh=False)
            if any("/" in k for k in record):  # evaluation results: keep them on screen
                self.bar.write(f"step {record['step']}: {short}")
        else:
            print(f"step {record['step']}: " + " ".join(f"{k}={v}" for k, v in short.items()), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
        for sink in self.sinks:
            sink.close()
