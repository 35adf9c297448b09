"""Any supported checkpoint in: the format is detected from the content, read by its module, and
returned as our payload; then the entry points for fine-tuning (`load_pretrained`, `load_into`) and
for use (`load`: a ready model with its tokenizer and preprocessing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from siglip.checkpoint import FORMAT, Payload, read_checkpoint, tokenizer_from_payload
from siglip.config import ModelConfig, model_config_from_dict
from siglip.interop.big_vision import read_big_vision
from siglip.interop.hf import read_hf
from siglip.interop.open_clip import read_open_clip
from siglip.interop.tensors import is_npz, read_tensors
from siglip.model import SigLIP, resize_pos_embed
from siglip.transforms import image_transform


def load_payload(path: str | Path, tokenizer: str | Path | None = None) -> Payload:
    """Any supported checkpoint -> our payload dict. `tokenizer`: a SentencePiece model for formats
    that do not carry one beside the weights."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        if (path / "config.json").is_file() and any(
            (path / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")
        ):
            return read_hf(path, tokenizer)
        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if (path / name).is_file():
                return load_payload(path / name, tokenizer)
        raise ValueError(
            f"{path}: folder with no checkpoint this toolkit knows (looked for config.json + model.safetensors "
            "or pytorch_model.bin, or open_clip_model.safetensors / open_clip_pytorch_model.bin)"
        )
    if is_npz(path):
        return read_big_vision(path, tokenizer)
    state = read_tensors(path)
    if state.get("format") == FORMAT:
        return read_checkpoint(path)
    if any(k.startswith("visual.trunk.") for k in state):
        return read_open_clip(path, state, tokenizer)
    hf_keys = ("vision_model.", "text_model.", "embeddings.patch_embedding.", "embeddings.token_embedding.")
    if any(k.startswith(hf_keys) for k in state):
        return read_hf(path, tokenizer)
    raise ValueError(
        f"{path}: unknown checkpoint format (first keys {sorted(state)[:5]}); expected our model file, Hugging "
        "Face SigLIP (vision_model./text_model.), open_clip SigLIP (visual.trunk./text.) or a big_vision .npz"
    )


def load_pretrained(path: str | Path, tokenizer: str | Path | None = None, image_size: int = 0) -> Payload:
    """`load_payload`, then position embeddings resized (bilinear) when fine-tuning at another
    resolution: `image_size` > 0 and != the checkpoint's. t' and b come with the state dict."""
    payload = load_payload(path, tokenizer)
    cfg = payload["model_config"]
    if image_size and image_size != cfg["image_size"] and "image.pos_embed" in payload["state_dict"]:
        if image_size % cfg["patch_size"]:
            raise ValueError(
                f"finetune image size {image_size} is not a multiple of the patch size {cfg['patch_size']}"
            )
        sd = payload["state_dict"]
        sd["image.pos_embed"] = resize_pos_embed(sd["image.pos_embed"], image_size // cfg["patch_size"])
        cfg["image_size"] = payload["preprocess"]["image_size"] = image_size
    return payload


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


def load(path: str | Path, device: str | torch.device = "cpu", tokenizer: str | Path | None = None) -> SigLIP:
    """A ready-to-use model in eval mode, with `model.tokenizer` (list of str -> (n, L) ids) and
    `model.preprocess` (PIL image -> (3, S, S) tensor) attached.

    `path`: our model file, a Hugging Face SigLIP folder or weights file, an open_clip SigLIP checkpoint
    or a big_vision .npz (detected, see `load_payload`); `tokenizer`: a SentencePiece model for
    formats that do not keep one beside the weights."""
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
    pre = payload["preprocess"]
    model.preprocess: Callable = image_transform(int(pre["image_size"]), pre["resample"])
    return model.to(device).eval()
