"""Writing and resuming checkpoints in a training run: keep-last-N, fallback to the newest good
checkpoint, clear errors when the output folder cannot be written, and what a resume on another
world size changes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from siglip.checkpoint import publish_checkpoint, save_train_state, step_checkpoint_path, step_checkpoints

log = logging.getLogger(__name__)


def world_size_note(saved: int | None, now: int, streaming: bool, tables: bool = False) -> str | None:
    """What changes when a checkpoint written by `saved` processes resumes on `now` (None: same)."""
    if saved is None or saved == now:
        return None
    note = (
        f"resuming a {saved}-process checkpoint on {now} process(es): the weights and optimizer state are "
        "whole (by parameter name) and load under any world size; the global batch stays --batch-size, "
        f"now {now} x its 1/{now} share, so the loss and gradients are the same up to float summation order"
    )
    if tables:
        note += (
            "; parquet/Arrow rows are dealt to ranks anew, so the rest of this epoch takes other rows per step "
            "(some rows of the epoch may come twice or not at all)"
        )
    elif streaming:
        note += (
            "; tar shards are dealt to ranks anew, so the rest of this epoch reads the shards in another "
            "order (some samples of the epoch may come twice or not at all)"
        )
    else:
        note += "; manifest data: every step sees the same pairs as before"
    return note


def write_checkpoint(out_dir: str | Path, step: int, keep: int, *args: Any, **kwargs: Any) -> Path:
    """`save_train_state(out_dir/checkpoint-<step>.pt, *args, **kwargs)`, then `checkpoint.pt` ->
    it and only the newest `keep` kept. A full disk or a read-only folder raises OSError saying so
    and naming the previous checkpoint, which is left intact."""
    path = step_checkpoint_path(out_dir, step)
    try:
        save_train_state(path, *args, **kwargs)
        return publish_checkpoint(out_dir, step, keep)
    except OSError as e:
        previous = next((p for p in step_checkpoints(out_dir) if p != path), None)
        raise OSError(
            e.errno,
            f"cannot write checkpoint {path}: {e.strerror or e}. "
            + (f"The previous checkpoint {previous} is intact." if previous else "No earlier checkpoint exists."),
        ) from e
