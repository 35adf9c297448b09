"""Model files: save (atomically) and load.

Our model file (`siglip_<name>.pt`) is a plain dict that `torch.load(..., weights_only=True)` reads:
    format: "siglip", version: 1,
    model_config: ModelConfig as a dict, state_dict: the model's tensors,
    tokenizer: {"proto": uint8 tensor of the tokenizer file, "length": int,
                "kind": "siglip" | "gemma" (absent = siglip; see siglip.tokenizer),
                "format": "tokenizer.json" and "specials": {"eos_token": ..., ...} for a Hugging
                Face tokenizer.json (absent = a SentencePiece model)},
    preprocess: {"image_size": int, "resample": str, "max_num_patches": int (NaFlex models only)}
A resumable training checkpoint is the same dict plus optimizer/scheduler state, step and RNG state,
so it loads as a model too. `siglip.interop` builds the same dict from Hugging Face, open_clip and
big_vision checkpoints; one made from a standalone tower file also has partial: "image" or "text"
(its state_dict holds only that tower).

Integrity: every file written here gets a `<file>.sha256` beside it (sha256sum's format, so
`sha256sum -c checkpoint.pt.sha256` checks it too); `read_checkpoint` verifies it when present, and
otherwise the CRC-32 that the zip container holds for every record (`siglip.zipcheck`), so a
truncated or bit-flipped file is named as corrupt instead of loading wrong numbers, also when it was
copied without its sidecar. Training keeps the
last N checkpoints as `checkpoint-<step>.pt` with `checkpoint.pt` a hard link to the newest;
`read_resumable` takes the newest one that verifies (see docs/reliability.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import torch

from siglip.config import ModelConfig
from siglip.model import SigLIP
from siglip.tokenizer import SENTENCEPIECE, Tokenizer
from siglip.zipcheck import load_checked

log = logging.getLogger(__name__)

FORMAT = "siglip"
VERSION = 1
NAFLEX_MAX_PATCHES = 256  # Siglip2ImageProcessor's default
LATEST = "checkpoint.pt"  # the newest resumable checkpoint (a hard link to checkpoint-<step>.pt)
STEP_FILE = re.compile(r"checkpoint-(\d+)\.pt")


class Payload(TypedDict, total=False):
    """What a model file holds, and what every checkpoint reader in `siglip.interop` returns."""

    format: str  # always FORMAT
    version: int  # VERSION
    model_config: dict  # ModelConfig as a dict (`siglip.config.model_config_from_dict` reads it back)
    state_dict: dict[str, torch.Tensor]  # our parameter names
    tokenizer: dict  # {"proto": uint8 tensor of the tokenizer file (may be empty), "length": int,
    #                   "kind": "siglip" | "gemma" (absent = siglip), and for a tokenizer.json:
    #                   "format": "tokenizer.json", "specials": {"eos_token": str, ...}}
    preprocess: dict  # {"image_size": int, "resample": "bicubic" | "bilinear" | "nearest",
    #                    "max_num_patches": int (NaFlex models only)}
    partial: str  # "image" or "text": a standalone tower, the other one absent from state_dict
    # a resumable training checkpoint adds:
    optimizer: dict
    scheduler: dict
    step: int
    config: dict  # the resolved training Config as a dict
    torch_rng: torch.Tensor
    world_size: int  # processes that wrote it (a resume on another count says what changes)


class _HashingWriter:
    """A write-only file that hashes what passes through (torch.save needs only write/flush)."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def write_atomically(path: Path, write: Callable[[Any], None]) -> None:
    """`write(f)` to a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def digest_path(path: str | Path) -> Path:
    """`<file>.sha256` beside `path`."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _write_digest(path: Path, digest: str) -> None:
    write_atomically(digest_path(path), lambda f: f.write(f"{digest}  {path.name}\n".encode()))


def atomic_save(obj: Any, path: str | Path) -> str:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves a
    truncated file behind under `path`. Then `<path>.sha256` (removed first, so a crash in between
    leaves an unverified file, never a wrong digest). Returns the sha256 hex digest."""
    path = Path(path)
    digest_path(path).unlink(missing_ok=True)
    box = []

    def write(f) -> None:
        w = _HashingWriter(f)
        torch.save(obj, w)
        box.append(w.sha.hexdigest())

    write_atomically(path, write)
    _write_digest(path, box[0])
    return box[0]


def verify_digest(path: str | Path) -> bool:
    """Check `path` against `<path>.sha256` if there is one (False: none to check). Raises
    ValueError naming the file when it does not match."""
    path, side = Path(path), digest_path(path)
    if not side.is_file():
        return False
    expected = side.read_text().split()[0] if side.read_text().strip() else ""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            sha.update(block)
    if sha.hexdigest() != expected:
        raise ValueError(
            f"{path}: corrupt: sha256 {sha.hexdigest()[:16]}... does not match {side.name} ({expected[:16]}...); "
            f"the file was truncated or changed after it was written ({path.stat().st_size} bytes)"
        )
    return True


def load_verified(path: str | Path) -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)` of a file that checks out: against
    `<path>.sha256` when there is one, else against the CRC-32 its zip container holds for every
    record (`siglip.zipcheck.load_checked`: checked as it is read), so a copy without the sidecar
    still names a flipped bit. Raises ValueError `<path>: corrupt: ...`."""
    if verify_digest(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    return load_checked(path)


def model_payload(
    model: SigLIP, tokenizer: Tokenizer, resample: str, state_dict: dict | None = None, max_num_patches: int = 0
) -> Payload:
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
        "tokenizer": tokenizer_entry(
            tokenizer.proto, tokenizer.length, tokenizer.kind, tokenizer.fmt, tokenizer.specials
        ),
        "preprocess": preprocess_dict(model.config, resample, max_num_patches),
    }


def preprocess_dict(cfg: ModelConfig, resample: str, max_num_patches: int = 0) -> dict:
    """The payload's `preprocess` entry; NaFlex models also keep their patch budget per image."""
    pre = {"image_size": cfg.image_size, "resample": resample}
    if cfg.naflex:  # enough for `transforms.checkpoint_transform` to build the NaFlex preprocessing
        pre.update(patch_size=cfg.patch_size, max_num_patches=max_num_patches or NAFLEX_MAX_PATCHES)
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


def read_checkpoint(path: str | Path) -> Payload:
    """Load one of our files without running pickled code; clear errors for anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a siglip model file (.pt)")
    try:
        obj = load_verified(path)
    except Exception as e:
        if ": corrupt: " in str(e):  # named by the check, with the record or digest
            raise
        raise ValueError(f"{path}: not a checkpoint this toolkit can read safely ({type(e).__name__}: {e})") from e
    return check_payload(obj, path)


def check_payload(obj: Any, path: str | Path) -> Payload:
    """`obj` (as torch.load read `path`) if it is one of our model files this version reads."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: unknown checkpoint format (top-level keys {keys}); expected a siglip model file")
    if obj.get("version") != VERSION:
        raise ValueError(f"{path}: siglip model file version {obj.get('version')}, this toolkit reads {VERSION}")
    missing = [k for k in ("model_config", "state_dict") if k not in obj]
    if missing:
        raise ValueError(f"{path}: damaged siglip model file: no {missing}")
    return obj


def tokenizer_entry(
    data: bytes, length: int, kind: str, fmt: str = SENTENCEPIECE, specials: dict[str, str] | None = None
) -> dict:
    """The payload's `tokenizer` entry (`data` empty: no tokenizer, an image-only model). Files
    holding a SentencePiece model keep the entry's original three keys."""
    entry = {
        "proto": torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8),
        "length": length,
        "kind": kind,
    }
    if fmt != SENTENCEPIECE:
        entry.update(format=fmt, specials=dict(specials or {}))
    return entry


def tokenizer_from_payload(payload: Payload) -> Tokenizer:
    tok = payload["tokenizer"]
    fmt, specials = str(tok.get("format", SENTENCEPIECE)), tok.get("specials")
    return Tokenizer(tok["proto"].numpy().tobytes(), int(tok["length"]), str(tok.get("kind", "siglip")), fmt, specials)


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
    world_size: int = 1,
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
        world_size=world_size,
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


# --------------------------------------------------------------------------------------------------
# Keep the last N checkpoints; resume from the newest good one


def step_checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f"checkpoint-{step:08d}.pt"


def step_checkpoints(out_dir: str | Path) -> list[Path]:
    """`checkpoint-<step>.pt` files in `out_dir`, newest step first."""
    found = [(int(m.group(1)), p) for p in Path(out_dir).glob("checkpoint-*.pt") if (m := STEP_FILE.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def publish_checkpoint(out_dir: str | Path, step: int, keep: int) -> Path:
    """After `checkpoint-<step>.pt` is written: make `checkpoint.pt` (and its digest) point at it,
    delete all but the newest `keep` step files (0 = keep all) and temporary files a killed write
    left behind. Rank 0 only. Returns the path of checkpoint.pt."""
    out_dir = Path(out_dir)
    src, latest = step_checkpoint_path(out_dir, step), out_dir / LATEST
    digest_path(latest).unlink(missing_ok=True)
    tmp = out_dir / f".{LATEST}.{os.getpid()}.link.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)  # no copy: the newest step file and checkpoint.pt share their bytes
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, latest)
    if digest_path(src).is_file():
        _write_digest(latest, digest_path(src).read_text().split()[0])
    for old in step_checkpoints(out_dir)[keep:] if keep > 0 else []:
        old.unlink(missing_ok=True)
        digest_path(old).unlink(missing_ok=True)
    for stale in out_dir.glob(".checkpoint*.tmp"):  # from a write that was killed
        stale.unlink(missing_ok=True)
    return latest


def resume_candidates(out_dir: str | Path) -> list[Path]:
    """Where `--resume` looks, in order: checkpoint.pt, then checkpoint-<step>.pt newest first."""
    latest = Path(out_dir) / LATEST
    return ([latest] if latest.is_file() else []) + step_checkpoints(out_dir)


def nonfinite_keys(state: dict) -> list[str]:
    """Names of the tensors in `state` (nested dicts too) holding NaN or inf."""
    bad = []
    for k, v in state.items():
        if isinstance(v, dict):
            bad += [f"{k}.{b}" for b in nonfinite_keys(v)]
        elif isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad.append(str(k))
    return bad


def _check_resumable(payload: dict, path: Path) -> None:
    if "optimizer" not in payload or "step" not in payload:
        raise ValueError(f"{path}: a model file without training state; it cannot be resumed from")
    bad = nonfinite_keys(payload["state_dict"])
    if bad:
        raise ValueError(f"{path}: non-finite weights in {bad[:3]}")


def read_resumable(out_dir: str | Path) -> tuple[dict, Path]:
    """The newest checkpoint in `out_dir` that reads, verifies and holds finite training state,
    with its path. A broken one is logged (naming the file and what is wrong) and the previous one
    tried; raises if none is usable."""
    tried: list[str] = []
    seen: list[Path] = []
    for path in resume_candidates(out_dir):
        if any(os.path.samefile(path, s) for s in seen):
            continue  # checkpoint.pt is a link to the newest step file: already tried
        seen.append(path)
        try:
            payload = read_checkpoint(path)
            _check_resumable(payload, path)
        except (ValueError, OSError, RuntimeError) as e:
            log.warning("cannot resume from %s; trying the previous checkpoint", e)
            tried.append(str(e))
            continue
        if tried:
            log.warning("resuming from %s (step %d): the newer checkpoint(s) were broken", path, payload["step"])
        return payload, path
    if not tried:
        raise FileNotFoundError(f"--resume: no checkpoint in {out_dir} (looked for {LATEST} and checkpoint-<step>.pt)")
    raise ValueError(f"--resume: no usable checkpoint in {out_dir}:\n  " + "\n  ".join(tried))
