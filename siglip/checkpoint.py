"""Model files: save (atomically) and load.

Our model file (`siglip_<name>.pt`) is a plain dict that `torch.load(..., weights_only=True)` reads:
    format: "siglip", version: 1,
    model_config: ModelConfig as a dict, state_dict: the model's tensors,
    tokenizer: {"proto": uint8 tensor of the SentencePiece model, "length": int,
                "kind": "siglip" | "gemma" (absent = siglip; see siglip.tokenizer)},
    preprocess: {"image_size": int, "resample": str, "max_num_patches": int (NaFlex models only)}
A resumable training checkpoint is the same dict plus optimizer/scheduler state, step and RNG state,
so it loads as a model too. `siglip.convert` builds the same dict from Hugging Face, open_clip and
big_vision checkpoints; one made from a standalone tower file also has partial: "image" or "text"
(its state_dict holds only that tower).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig, model_config_from_dict
from .model import SigLIP
from .tokenizer import Tokenizer
from .transforms import model_transform

FORMAT = "siglip"
VERSION = 1
NAFLEX_MAX_PATCHES = 256  # Siglip2ImageProcessor's default


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


def model_payload(
    model: SigLIP, tokenizer: Tokenizer, resample: str, state_dict: dict | None = None, max_num_patches: int = 0
) -> dict:
    """The dict that a model file holds (tensors moved to the CPU). `state_dict`: the model's
    tensors when they are gathered elsewhere (a sharded model: `siglip.distributed.full_model_state`).
    `max_num_patches`: a NaFlex model's patch budget per image (0 = the SigLIP 2 processor's 256)."""
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
            "kind": tokenizer.kind,
        },
        "preprocess": preprocess_dict(model.config, resample, max_num_patches),
    }


def preprocess_dict(cfg: ModelConfig, resample: str, max_num_patches: int = 0) -> dict:
    """The payload's `preprocess` entry; NaFlex models also keep their patch budget per image."""
    pre = {"image_size": cfg.image_size, "resample": resample}
    if cfg.naflex:
        pre["max_num_patches"] = max_num_patches or NAFLEX_MAX_PATCHES
    return pre


def save_model(
    path: str | Path,
    model: SigLIP,
    tokenizer: Tokenizer,
    resample: str = "bicubic",
    state_dict: dict | None = None,
    max_num_patches: int = 0,
) -> None:
    atomic_save(model_payload(model, tokenizer, resample, state_dict, max_num_patches), path)


def read_checkpoint(path: str | Path) -> dict:
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


def tokenizer_from_payload(payload: dict) -> Tokenizer:
    tok = payload["tokenizer"]
    return Tokenizer(tok["proto"].numpy().tobytes(), int(tok["length"]), str(tok.get("kind", "siglip")))


def load(path: str | Path, device: str | torch.device = "cpu", tokenizer: str | Path | None = None) -> SigLIP:
    """A ready-to-use model in eval mode, with `model.tokenizer` (list of str -> (n, L) ids) and
    `model.preprocess` (PIL image -> (3, S, S) tensor; NaFlex: an unbatched `NaFlexPatches`) attached.

    `path`: our model file, a Hugging Face SigLIP folder or weights file, an open_clip SigLIP checkpoint
    or a big_vision .npz (detected, see `siglip.convert`); `tokenizer`: a SentencePiece model for
    formats that do not keep one beside the weights."""
    from .convert import load_payload  # convert builds on this module

    payload = load_payload(path, tokenizer)
    if payload.get("partial"):
        raise ValueError(
            f"{path}: only the {payload['partial']} tower; a usable model needs both (fine-tune from it instead)"
        )
    cfg: ModelConfig = model_config_from_dict(payload["model_config"])
    model = SigLIP(cfg)
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the saved config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.tokenizer = tokenizer_from_payload(payload)
    model.preprocess: Callable = model_transform(cfg, payload["preprocess"])
    return model.to(device).eval()


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
    max_num_patches: int = 0,
) -> None:
    """A model file plus what `--resume` needs to continue exactly where this step left off.
    `model_state` / `optimizer_state`: gathered full states of a distributed run
    (`siglip.distributed.full_model_state` / `full_optimizer_state`, keyed by parameter name)."""
    payload = model_payload(model, tokenizer, resample, model_state, max_num_patches)
    payload.update(
        optimizer=optimizer.state_dict() if optimizer_state is None else optimizer_state,
        scheduler=scheduler.state_dict(),
        step=step,
        config=config,
        torch_rng=torch.get_rng_state(),
    )
    atomic_save(payload, path)


def load_train_state(
    payload: dict, model: SigLIP, optimizer: torch.optim.Optimizer, scheduler: Any, where: str | Path = ""
) -> int:
    """Restore model, optimizer, scheduler and RNG from a `save_train_state` payload (as
    `read_checkpoint` returns it, so the file is read once); returns the step."""
    if "optimizer" not in payload:
        raise ValueError(f"{where}: a model file without training state; it cannot be resumed from")
    groups = payload["optimizer"]["param_groups"]
    if any(isinstance(p, str) for g in groups for p in g["params"]):  # by name: any strategy/world size
        from .distributed import load_full_state

        load_full_state(model, optimizer, payload["state_dict"], payload["optimizer"])
    else:
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["torch_rng"])
    return int(payload["step"])
