"""SigLIP 2 facts every format's reader needs (the formats' own SigLIP 2 parts live in hf.py,
open_clip.py and big_vision.py):

- the Gemma tokenizer (`tokenizer.model`, 256k pieces, or only `tokenizer.json` in folders saved by
  transformers 5): kind "gemma" (see `siglip.tokenizer`), told by the folder's
  `tokenizer_config.json` (`tokenizer_class: GemmaTokenizer`) or, without one, by the vocabulary
  itself (a BOS piece: Gemma's vocabularies have one, SigLIP 1's do not);
- open_clip's GELU per tower: timm image towers differ by model name, the text tower by `act_kwargs`;
- NaFlex (Hugging Face `Siglip2ImageProcessor`): the folder's `max_num_patches`.
"""

from __future__ import annotations

import json
from pathlib import Path

import sentencepiece as spm

from siglip.interop.tensors import TokenizerFile
from siglip.tokenizer import TOKENIZER_JSON
from siglip.tokenizer_json import JsonPieces

GEMMA_TOKENIZERS = {"GemmaTokenizer", "GemmaTokenizerFast", "Siglip2Tokenizer"}
SIGLIP_TOKENIZERS = {"SiglipTokenizer", "T5Tokenizer", "T5TokenizerFast"}
# timm's SigLIP image towers built with act_layer='gelu_tanh' (every other one uses exact GELU)
TIMM_TANH = {
    f"vit_{name}_siglip{gap}_{size}"
    for gap in ("", "_gap")
    for name, sizes in {
        "base_patch32": (256,),
        "large_patch16": (512,),
        "so400m_patch16": (256, 384, 512),
        "giantopt_patch16": (256, 384),
    }.items()
    for size in sizes
}


# --------------------------------------------------------------------------------------------------
# Tokenizer kind


def tokenizer_kind(folder: Path, tok: TokenizerFile) -> str:
    """'gemma' or 'siglip' for the tokenizer `tok`, told by the tokenizer_config.json of the folder it was
    found in (`folder`, the checkpoint's, when `tok` does not say), else by its vocabulary."""
    cfg_file = (tok.folder or folder) / "tokenizer_config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        cls = str(cfg.get("tokenizer_class", ""))
        if cls in GEMMA_TOKENIZERS:
            if cfg.get("add_bos_token", False):
                raise ValueError(f"{cfg_file}: add_bos_token=true; SigLIP 2 text towers were trained without BOS")
            return "gemma"
        if cls in SIGLIP_TOKENIZERS:
            return "siglip"
        if cls:
            raise ValueError(
                f"{cfg_file}: tokenizer_class {cls!r} not supported (one of {sorted(GEMMA_TOKENIZERS | SIGLIP_TOKENIZERS)})"
            )
    if not tok.data:  # loaded without a tokenizer (images only)
        return "siglip"
    if tok.fmt == TOKENIZER_JSON:  # Gemma's vocabulary has <bos> and <pad>, SigLIP 1's no BOS
        pieces = JsonPieces(tok.data, "gemma", tok.specials)
        return "gemma" if pieces.bos_id() >= 0 and pieces.pad_id() >= 0 else "siglip"
    sp = spm.SentencePieceProcessor(model_proto=tok.data)
    return "gemma" if sp.bos_id() >= 0 and sp.pad_id() >= 0 else "siglip"


# --------------------------------------------------------------------------------------------------
# Hugging Face NaFlex processor settings


def hf_max_num_patches(folder: Path) -> int:
    """A NaFlex folder's `preprocessor_config.json` max_num_patches (default 256), checked."""
    p = folder / "preprocessor_config.json"
    pre = json.loads(p.read_text()) if p.is_file() else {}
    n = int(pre.get("max_num_patches", 256))
    if n < 1:
        raise ValueError(f"{p}: max_num_patches={n}")
    return n


# --------------------------------------------------------------------------------------------------
# open_clip


def open_clip_gelus(cfg_json: dict, kind: str) -> tuple[str, str]:
    """(image, text) GELU of an open_clip SigLIP from its open_clip_config.json ({} if none): the
    timm image tower's by model name, the text tower's from `act_kwargs` (SigLIP 2 configs say tanh;
    without a config a Gemma tokenizer means SigLIP 2, hence tanh)."""
    model_cfg = cfg_json.get("model_cfg", {})
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    image = "tanh" if vision.get("timm_model_name") in TIMM_TANH else "exact"
    act = vision.get("timm_model_kwargs", {}).get("act_layer")
    if act is not None:
        image = {"gelu_tanh": "tanh", "gelu": "exact"}.get(act) or _unsupported(
            "vision_cfg.timm_model_kwargs.act_layer", act
        )
    if "act_kwargs" in text:
        approx = text["act_kwargs"].get("approximate", "none")
        text_gelu = {"tanh": "tanh", "none": "exact"}.get(approx) or _unsupported(
            "text_cfg.act_kwargs.approximate", approx
        )
    else:
        text_gelu = "tanh" if kind == "gemma" and not text else "exact"
    return image, text_gelu


def _unsupported(field: str, value: object) -> str:
    raise ValueError(f"open_clip_config.json: {field}={value!r} not supported (a GELU, tanh or exact)")
