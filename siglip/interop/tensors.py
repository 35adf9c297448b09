"""Reading checkpoint files safely (safetensors, torch files with weights_only, .npz without
pickles: no pickled code is ever run), finding the tokenizer beside them, and building our payload."""

from __future__ import annotations

import re
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from siglip.checkpoint import FORMAT, VERSION, Payload
from siglip.config import SIZES, ModelConfig
from siglip.model import SigLIP

IGNORED = re.compile(r"(^|\.)position_ids$")  # HF buffers (arange), saved by older transformers


def is_npz(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return bool(names) and all(n.endswith(".npy") for n in names)


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Name -> tensor from .safetensors, a torch file (weights_only) or an .npz (no pickles)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if is_npz(path):
        with np.load(path, allow_pickle=False) as z:
            return {k: torch.from_numpy(np.asarray(z[k], dtype=np.float32)) for k in z.files}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a file this toolkit can read safely ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj
    for key in ("state_dict", "model", "module"):  # training-script wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    if all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def find_tokenizer(where: Path, explicit: str | Path | None, required: bool = True) -> bytes:
    """The SentencePiece model: `explicit`, else spiece.model / tokenizer.model / the one *.model
    beside the checkpoint. None found: an error, or b"" when not `required` (an image-only load)."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer not found: {p}")
        return p.read_bytes()
    folder = where if where.is_dir() else where.parent
    for name in ("spiece.model", "tokenizer.model"):
        if (folder / name).is_file():
            return (folder / name).read_bytes()
    models = sorted(folder.glob("*.model"))
    if len(models) == 1:
        return models[0].read_bytes()
    if not required:
        return b""
    raise FileNotFoundError(
        f"{where}: no SentencePiece model found (looked for spiece.model, tokenizer.model or a single *.model "
        f"in {folder}); pass one with --tokenizer"
    )


def heads_for(width: int, where: str) -> int:
    """Attention heads when the file does not say: the released sizes' (So400m: 1152 wide, 16
    heads of 72), else head_dim 64 as in every other released SigLIP."""
    for name in ("S", "B", "L", "So400m"):
        w, _, _, heads = SIZES[name]
        if w == width:
            return heads
    if width % 64 == 0:
        return width // 64
    raise ValueError(f"{where}: cannot tell the number of attention heads for width {width}; give a config file")


def make_payload(cfg: ModelConfig, state: dict[str, Tensor], proto: bytes, resample: str, partial: str = "") -> Payload:
    """Our payload for converted weights (`proto` empty: no tokenizer was found or needed)."""
    out: Payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": asdict(cfg),
        "state_dict": state,
        "tokenizer": {
            "proto": torch.frombuffer(bytearray(proto), dtype=torch.uint8)
            if proto
            else torch.zeros(0, dtype=torch.uint8),
            "length": cfg.text_length,
        },
        "preprocess": {"image_size": cfg.image_size, "resample": resample},
    }
    if partial:
        out["partial"] = partial  # a standalone tower: the other tower, t' and b are not in state_dict
    return out


def model_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in SigLIP(cfg).state_dict().items()}
