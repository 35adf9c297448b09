"""Optional copies of the metrics.jsonl scalars to TensorBoard and Weights & Biases.

    --config.log.tensorboard=true     -> OUTPUT_DIR/tensorboard/ (events; `tensorboard --logdir OUTPUT_DIR`)
    --config.log.wandb=PROJECT        -> a W&B run in PROJECT, files under OUTPUT_DIR/wandb/

Both are extras (`pip install 'siglip[tensorboard]'`, `'siglip[wandb]'`): a missing package stops
the run at start-up with the install command. The scalars and their names are exactly those of
metrics.jsonl (`loss`, `lr`, `t`, `b`, `grad_norm`, `images_per_s`, `skipped`, `<dataset>/<metric>`),
at the same steps. W&B stays offline (files only, `wandb sync` later) unless WANDB_MODE is set or an
API key is configured, so a machine without network never hangs on it; a resumed run continues the
same W&B run (its id is kept in OUTPUT_DIR/wandb_id.txt).
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Protocol

from siglip.config import LogConfig


class ScalarSink(Protocol):
    def write(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def scalars_of(record: dict) -> dict[str, float]:
    """The numeric entries of a metrics.jsonl record, without `step` (booleans and text dropped)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, numbers.Real) and not isinstance(v, bool)
    }


class TensorBoardSink:
    """Scalars as TensorBoard events under `log_dir` (torch's SummaryWriter)."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("log.tensorboard needs tensorboard: pip install 'siglip[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_mode() -> str:
    """WANDB_MODE if set; else "online" when an API key is configured (env or ~/.netrc), else "offline"."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    has_netrc_key = netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    return "online" if os.environ.get("WANDB_API_KEY") or has_netrc_key else "offline"


class WandbSink:
    """Scalars to a Weights & Biases run in `project`; the run's id lives in out_dir/wandb_id.txt."""

    def __init__(self, project: str, out_dir: str | Path, name: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise ImportError("log.wandb needs wandb: pip install 'siglip[wandb]'") from None
        out_dir = Path(out_dir)
        id_file = out_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
        id_file.write_text(run_id + "\n")
        self.wandb = wandb
        self.run = wandb.init(
            project=project,
            name=name,
            id=run_id,
            resume="allow",
            dir=str(out_dir),
            config=config,
            mode=wandb_mode(),
        )

    def write(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def scalar_sinks(cfg: LogConfig, out_dir: str | Path, config: dict) -> list[ScalarSink]:
    """The sinks the config asks for (none by default). Call on the logging rank only."""
    sinks: list[ScalarSink] = []
    if cfg.tensorboard:
        sinks.append(TensorBoardSink(Path(out_dir) / "tensorboard"))
    if cfg.wandb:
        sinks.append(WandbSink(cfg.wandb, out_dir, Path(out_dir).resolve().name, config))
    return sinks
