"""Any supported checkpoint in: a Hub id becomes a local path first (`siglip.interop.hub`), then the
format is detected from the content, read by its module, and returned as our payload; then the entry
points for fine-tuning (`load_pretrained`, `load_into`) and a tokenizer alone (`load_tokenizer`). A
ready-to-use model with its tokenizer and preprocessing is `siglip.load` (siglip/api.py)."""

from __future__ import annotations

from pathlib import Path

from siglip.checkpoint import FORMAT, Payload, check_payload
from siglip.interop.big_vision import read_big_vision
from siglip.interop.hf import read_hf
from siglip.interop.hub import SHARD_INDEXES, resolve_model
from siglip.interop.open_clip import read_open_clip
from siglip.interop.siglip2 import tokenizer_kind
from siglip.interop.tensors import find_tokenizer, is_npz, read_tensors
from siglip.model import SigLIP
from siglip.resolution import at_image_size
from siglip.tokenizer import Tokenizer


def load_payload(path: str | Path, tokenizer: str | Path | None = None, require_tokenizer: bool = True) -> Payload:
    """Any supported checkpoint (a path, or a Hub id: `org/name[@revision]`, `hf-hub:org/name`) -> our
    payload dict. `tokenizer`: a SentencePiece model or tokenizer.json for formats that do not carry
    one beside the weights; `require_tokenizer=False`: none found is not an error
    (the payload's tokenizer proto is then empty: image-only use, see `siglip.load`)."""
    path = resolve_model(path)  # the one place a reference becomes a local path; readers see only that
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        if (path / "config.json").is_file() and any(
            (path / n).is_file() for n in ("model.safetensors", "pytorch_model.bin", *SHARD_INDEXES)
        ):
            return read_hf(path, tokenizer, require_tokenizer)
        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if (path / name).is_file():
                return load_payload(path / name, tokenizer, require_tokenizer)
        raise ValueError(
            f"{path}: folder with no checkpoint this toolkit knows (looked for config.json + model.safetensors, "
            "pytorch_model.bin or a shard index, or open_clip_model.safetensors / open_clip_pytorch_model.bin)"
        )
    if is_npz(path):
        return read_big_vision(path, tokenizer, require_tokenizer)
    state = read_tensors(path)  # checked first (.sha256 or the zip's CRCs): a flipped bit is named, not loaded
    if state.get("format") == FORMAT:
        return check_payload(state, path)  # read once
    if any(k.startswith("visual.trunk.") for k in state):
        return read_open_clip(path, state, tokenizer, require_tokenizer)
    hf_keys = ("vision_model.", "text_model.", "embeddings.patch_embedding.", "embeddings.token_embedding.")
    if any(k.startswith(hf_keys) for k in state):
        return read_hf(path, tokenizer, require_tokenizer)
    raise ValueError(
        f"{path}: unknown checkpoint format (first keys {sorted(state)[:5]}); expected our model file, Hugging "
        "Face SigLIP (vision_model./text_model.), open_clip SigLIP (visual.trunk./text.) or a big_vision .npz"
    )


def load_pretrained(path: str | Path, tokenizer: str | Path | None = None, image_size: int = 0) -> Payload:
    """`load_payload`, then, to fine-tune at another resolution (`image_size` > 0 and != the
    checkpoint's), the position embeddings resized as big_vision's `resample_posemb` does
    (`siglip.resolution`). t' and b come with the state dict."""
    return at_image_size(load_payload(path, tokenizer), image_size, "big_vision", path)


def load_into(model: SigLIP, payload: Payload, where: str | Path) -> None:
    """Copy the payload's weights into `model`. A full payload must match exactly; a standalone
    image tower (`partial`) fills only `model.image` (LiT-style: pretrained image tower, new text)."""
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    tower = payload.get("partial")
    allowed = [k for k in missing if tower and not k.startswith(f"{tower}.")]
    if unexpected or len(allowed) != len(missing):
        raise ValueError(
            f"{where}: weights do not fit the model (missing {[k for k in missing if k not in allowed][:5]}, "
            f"unexpected {unexpected[:5]})"
        )


def load_tokenizer(ref: str | Path, length: int) -> Tokenizer:
    """A tokenizer alone (training's `tokenizer.path`): a SentencePiece model or tokenizer.json, a folder
    holding one, or a Hub id (only its tokenizer files are fetched). Its kind (SigLIP's or SigLIP 2's
    Gemma) is told as for a checkpoint's (`tokenizer_kind`)."""
    tok = find_tokenizer(Path("."), ref)
    try:
        return Tokenizer(tok.data, length, tokenizer_kind(tok.folder or Path("."), tok), tok.fmt, tok.specials)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{ref}: not a tokenizer siglip reads: {e}") from e
