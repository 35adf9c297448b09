"""Model files: save (atomically) and load.

Our model file (`siglip_<name>.pt`) is a plain dict that `torch.load(..., weights_only=True)` reads:
    format: "siglip", version: 1,
    model_config: ModelConfig as a dict, state_dict: the model's tensors,
    tokenizer: {"proto": uint8 tensor of the SentencePiece model, "length": int},
    preprocess: {"image_size": int, "resample": str}
A resumable training checkpoint is the same dict plus optimizer/scheduler state, step and RNG state,
so it loads as a model too. `siglip.interop` builds the same dict from Hugging Face, open_clip and
big_vision checkpoints; one made from a standalone tower file also has partial: "image" or "text"
(its state_dict holds only that tower).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, TypedDict

import torch

from siglip.model import SigLIP
from siglip.tokenizer import Tokenizer

FORMAT = "siglip"
VERSION = 1


class Payload(TypedDict, total=False):
    """What a model file holds, and what every checkpoint reader in `siglip.interop` returns."""

    format: str  # always FORMAT
    version: int  # VERSION
    model_config: dict  # ModelConfig as a dict (`siglip.config.model_config_from_dict` reads it back)
    state_dict: dict[str, torch.Tensor]  # our parameter names
    tokenizer: dict  # {"proto": uint8 tensor of the SentencePiece model (may be empty), "length": int}
    preprocess: dict  # {"image_size": int, "resample": "bicubic" | "bilinear" | "nearest"}
    partial: str  # "image" or "text": a standalone tower, the other one absent from state_dict
    # a resumable training checkpoint adds:
    optimizer: dict
    scheduler: dict
    step: int
    config: dict  # the resolved training Config as a dict
    torch_rng: torch.Tensor


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves a
    truncated file behind under `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_payload(model: SigLIP, tokenizer: Tokenizer, resample: str, state_dict: dict | None = None) -> Payload:
    """The dict that a model file holds (tensors moved to the CPU). `state_dict`: the model's
    tensors when they are gathered elsewhere (a sharded model: `siglip.distributed.full_model_state`)."""
    if state_dict is None:
        state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_config": dataclasses.asdict(model.config),
        "state_dict": state_dict,
        "tokenizer": {
            "proto": torch.frombuffer(bytearray(tokenizer.proto), dtype=torch.uint8),
            "length": tokenizer.length,
        },
        "preprocess": {"image_size": model.config.image_size, "resample": resample},
    }


def save_model(
    path: str | Path, model: SigLIP, tokenizer: Tokenizer, resample: str = "bicubic", state_dict: dict | None = None
) -> None:
    atomic_save(model_payload(model, tokenizer, resample, state_dict), path)


def read_checkpoint(path: str | Path) -> Payload:
    """Load one of our files without running pickled code; clear errors for anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a siglip model file (.pt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a checkpoint this toolkit can read safely ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: unknown checkpoint format (top-level keys {keys}); expected a siglip model file")
    if obj.get("version") != VERSION:
        raise ValueError(f"{path}: siglip model file version {obj.get('version')}, this toolkit reads {VERSION}")
    return obj


def tokenizer_from_payload(payload: Payload) -> Tokenizer:
    tok = payload["tokenizer"]
    return Tokenizer(tok["proto"].numpy().tobytes(), int(tok["length"]))


# --------------------------------------------------------------------------------------------------
# Resumable training state


def save_train_state(
    path: str | Path,
    model: SigLIP,
    tokenizer: Tokenizer,
    resample: str,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    config: dict,
    *,
    model_state: dict | None = None,
    optimizer_state: dict | None = None,
) -> None:
    """A model file plus what `--resume` needs to continue exactly where this step left off.
    `model_state` / `optimizer_state`: gathered full states of a distributed run
    (`siglip.distributed.full_model_state` / `full_optimizer_state`, keyed by parameter name)."""
    payload = model_payload(model, tokenizer, resample, model_state)
    payload.update(
        optimizer=optimizer.state_dict() if optimizer_state is None else optimizer_state,
        scheduler=scheduler.state_dict(),
        step=step,
        config=config,
        torch_rng=torch.get_rng_state(),
    )
    atomic_save(payload, path)


def load_train_state(
    payload: Payload, model: SigLIP, optimizer: torch.optim.Optimizer, scheduler: Any, where: str | Path = ""
) -> int:
    """Restore model, optimizer, scheduler and RNG from a `save_train_state` payload (as
    `read_checkpoint` returns it, so the file is read once); returns the step."""
    if "optimizer" not in payload:
        raise ValueError(f"{where}: a model file without training state; it cannot be resumed from")
    groups = payload["optimizer"]["param_groups"]
    if any(isinstance(p, str) for g in groups for p in g["params"]):  # by name: any strategy/world size
        from siglip.distributed import load_full_state

        load_full_state(model, optimizer, payload["state_dict"], payload["optimizer"])
    else:
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["torch_rng"])
    return int(payload["step"])
