"""Reading checkpoint files safely (safetensors, torch files with weights_only, .npz without
pickles: no pickled code is ever run), finding the tokenizer beside them, and building our payload."""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from siglip.checkpoint import FORMAT, VERSION, Payload, load_verified, preprocess_dict, tokenizer_entry
from siglip.config import SIZES, ModelConfig
from siglip.interop.hub import resolve_tokenizer
from siglip.model import empty_model
from siglip.tokenizer import SENTENCEPIECE, TOKENIZER_JSON
from siglip.tokenizer_json import special_names

IGNORED = re.compile(r"(^|\.)position_ids$")  # HF buffers (arange), saved by older transformers


def is_npz(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return bool(names) and all(n.endswith(".npy") for n in names)


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Name -> tensor from .safetensors, a torch file (weights_only; checked first, see
    `siglip.checkpoint.load_verified`) or an .npz (no pickles)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if is_npz(path):
        with np.load(path, allow_pickle=False) as z:
            return {k: torch.from_numpy(np.asarray(z[k], dtype=np.float32)) for k in z.files}
    try:  # checked against the .sha256 beside it, else the zip's CRC-32s: a flipped bit is named, not loaded
        obj = load_verified(path)
    except Exception as e:
        if ": corrupt: " in str(e):  # named by the check, with the record or digest
            raise
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


@dataclass(frozen=True)
class TokenizerFile:
    """A tokenizer found beside a checkpoint: the file's bytes (empty: none), its format
    ("sentencepiece" or "tokenizer.json") and, for a tokenizer.json, the special tokens that the
    folder's tokenizer_config.json names (see `siglip.tokenizer_json`)."""

    data: bytes = b""
    fmt: str = SENTENCEPIECE
    specials: dict[str, str] = field(default_factory=dict)
    folder: Path | None = None  # where it was found: its tokenizer_config.json tells its kind


def folder_specials(folder: Path) -> dict[str, str]:
    """Special token names from special_tokens_map.json and tokenizer_config.json (the latter wins)."""
    out: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        p = folder / name
        if p.is_file():
            try:
                out.update(special_names(json.loads(p.read_text())))
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}: not JSON ({e})") from e
    return out


def _tokenizer_file(p: Path) -> TokenizerFile:
    if p.suffix == ".json":
        return TokenizerFile(p.read_bytes(), TOKENIZER_JSON, folder_specials(p.parent), p.parent)
    return TokenizerFile(p.read_bytes(), folder=p.parent)


def find_tokenizer(where: Path, explicit: str | Path | None, required: bool = True) -> TokenizerFile:
    """The tokenizer: `explicit` (a file, a folder holding one, or a Hub id: `resolve_tokenizer`), else
    the one in the checkpoint's folder (`tokenizer_in`). None found: an error, or an empty
    TokenizerFile when not `required` (an image-only load)."""
    if explicit:
        p = resolve_tokenizer(explicit)
        if p.is_dir():
            return tokenizer_in(p, str(explicit), True)
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer not found: {p}")
        return _tokenizer_file(p)
    return tokenizer_in(where if where.is_dir() else where.parent, str(where), required)


def tokenizer_in(folder: Path, where: str, required: bool) -> TokenizerFile:
    """spiece.model / tokenizer.model / the one *.model in `folder`, else a tokenizer.json
    (transformers 5 saves SigLIP 2's that way)."""
    models = [folder / n for n in ("spiece.model", "tokenizer.model") if (folder / n).is_file()]
    models = models or sorted(folder.glob("*.model"))
    if len(models) == 1 or (models and models[0].name in ("spiece.model", "tokenizer.model")):
        return _tokenizer_file(models[0])
    if (folder / "tokenizer.json").is_file():
        return _tokenizer_file(folder / "tokenizer.json")
    if not required:
        return TokenizerFile()
    raise FileNotFoundError(
        f"{where}: no tokenizer found (looked for spiece.model, tokenizer.model, a single *.model or tokenizer.json "
        f"in {folder}); pass one with --tokenizer (a file, a folder or a Hub id such as google/siglip-base-patch16-224)"
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


def make_payload(
    cfg: ModelConfig,
    state: dict[str, Tensor],
    tok: TokenizerFile,
    resample: str,
    partial: str = "",
    kind: str = "siglip",
    max_num_patches: int = 0,
) -> Payload:
    """Our payload for converted weights (`tok.data` empty: no tokenizer was found or needed). `kind`:
    the tokenizer's ("siglip" or SigLIP 2's "gemma"); `max_num_patches`: a NaFlex model's budget."""
    out: Payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": asdict(cfg),
        "state_dict": state,
        "tokenizer": tokenizer_entry(tok.data, cfg.text_length, kind, tok.fmt, tok.specials),
        "preprocess": preprocess_dict(cfg, resample, max_num_patches),
    }
    if partial:
        out["partial"] = partial  # a standalone tower: the other tower, t' and b are not in state_dict
    return out


def model_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in empty_model(cfg).state_dict().items()}


def read_sharded(index_path: Path) -> dict[str, Tensor]:
    """A Hugging Face checkpoint split over shard files: the index JSON's `weight_map` (tensor name ->
    shard file, beside it) read shard by shard into one dict. A missing shard is a FileNotFoundError;
    a malformed index, or tensors the index lists that no shard holds, a ValueError; each names the file."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise TypeError("empty or not an object")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index_path}: not a shard index (a JSON object with a 'weight_map'): {e}") from None
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values()), key=str):
        if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard.startswith("."):
            raise ValueError(f"{index_path}: shard {shard!r} is not a file name beside the index")
        path = index_path.parent / shard
        if not path.is_file():
            raise FileNotFoundError(f"{index_path}: shard {shard} is missing (expected at {path})")
        state.update(read_tensors(path))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise ValueError(f"{index_path}: {len(missing)} tensors the index lists are in no shard ({missing[:3]}...)")
    return state
