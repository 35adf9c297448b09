"""SigLIP 2 across the formats: what differs from SigLIP 1 when reading and writing checkpoints.

- the Gemma tokenizer (`tokenizer.model`, 256k pieces): kind "gemma" (see `siglip.tokenizer`), told
  by the folder's `tokenizer_config.json` (`tokenizer_class: GemmaTokenizer`) or, without one, by
  the SentencePiece model itself (a BOS piece: Gemma's vocabularies have one, SigLIP 1's do not);
- one GELU per tower (Hugging Face `hidden_act` per tower; open_clip's timm image towers differ by
  model name, its text tower by `act_kwargs`);
- NaFlex (`model_type: siglip2`): a (sqrt(num_patches))^2 position grid and the processor's
  `max_num_patches`;
- export: the config, tokenizer and processor files that transformers reads back for both kinds.
An option this toolkit does not model is an error naming the field, never a shape error later.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import sentencepiece as spm

from ..config import ModelConfig, TowerConfig
from ..tokenizer import Tokenizer

GEMMA_TOKENIZERS = {"GemmaTokenizer", "GemmaTokenizerFast", "Siglip2Tokenizer"}
SIGLIP_TOKENIZERS = {"SiglipTokenizer", "T5Tokenizer", "T5TokenizerFast"}
HF_GELU = {"gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu": "exact"}
HF_ACT = {"tanh": "gelu_pytorch_tanh", "exact": "gelu"}
HF_MODEL_TYPES = {"siglip": "SiglipModel (fixed resolution)", "siglip2": "Siglip2Model (NaFlex)"}
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


def tokenizer_kind(folder: Path, proto: bytes) -> str:
    """'gemma' or 'siglip' for the SentencePiece model `proto` found in `folder`."""
    cfg_file = folder / "tokenizer_config.json"
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
    sp = spm.SentencePieceProcessor(model_proto=proto)
    return "gemma" if sp.bos_id() >= 0 and sp.pad_id() >= 0 else "siglip"


# --------------------------------------------------------------------------------------------------
# Hugging Face config.json -> ModelConfig


def hf_tower_gelu(c: dict, where: str, field: str) -> str:
    act = c.get("hidden_act", "gelu_pytorch_tanh")
    if act not in HF_GELU:
        raise ValueError(f"{where}: {field}.hidden_act={act!r} not supported (one of {sorted(HF_GELU)})")
    return HF_GELU[act]


def check_hf_tower(c: dict, where: str, field: str) -> None:
    """Options of Siglip(2)VisionConfig / TextConfig this toolkit's towers do not have: errors."""
    eps = c.get("layer_norm_eps", 1e-6)
    if abs(eps - 1e-6) > 1e-12:
        raise ValueError(f"{where}: {field}.layer_norm_eps={eps}; SigLIP towers use 1e-6")
    if c.get("num_channels", 3) != 3:
        raise ValueError(f"{where}: {field}.num_channels={c['num_channels']}; only RGB (3) image towers are supported")
    if not c.get("vision_use_head", True):
        raise ValueError(f"{where}: {field}.vision_use_head=false (no MAP head) is not a SigLIP image tower")


def hf_tower(c: dict, where: str, field: str) -> TowerConfig:
    check_hf_tower(c, where, field)
    return TowerConfig(
        c.get("hidden_size", 768),
        c.get("num_hidden_layers", 12),
        c.get("intermediate_size", 3072),
        c.get("num_attention_heads", 12),
        gelu=hf_tower_gelu(c, where, field),
    )


def hf_model_config(cfg_json: dict, where: str) -> ModelConfig:
    """ModelConfig from a SiglipModel (model_type siglip) or Siglip2Model (siglip2) config.json."""
    kind = cfg_json.get("model_type")
    if kind not in HF_MODEL_TYPES:
        known = ", ".join(f"{k!r}: {v}" for k, v in HF_MODEL_TYPES.items())
        raise ValueError(f"{where}: model_type {kind!r} is not supported (model_type {known})")
    v, t = cfg_json.get("vision_config", {}), cfg_json.get("text_config", {})
    image, text = hf_tower(v, where, "vision_config"), hf_tower(t, where, "text_config")
    patch = int(v.get("patch_size", 16))
    if kind == "siglip2":
        grid = math.isqrt(int(v.get("num_patches", 256)))
        if grid * grid != int(v.get("num_patches", 256)):
            raise ValueError(f"{where}: vision_config.num_patches={v['num_patches']} is not a square position grid")
        image_size = grid * patch
    else:
        image_size = int(v.get("image_size", 224))
    proj = t.get("projection_size") or text.width
    return ModelConfig(
        variant="hf",
        image=image,
        text=text,
        image_size=image_size,
        patch_size=patch,
        text_length=int(t.get("max_position_embeddings", 64)),
        vocab_size=int(t.get("vocab_size", 32000)),
        embed_dim=0 if proj == image.width else proj,
        text_head=True,
        gelu=image.gelu,
        naflex=kind == "siglip2",
    )


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


# --------------------------------------------------------------------------------------------------
# Export: the files transformers reads back


def hf_config_json(cfg: ModelConfig) -> dict:
    """config.json of a SiglipModel, or of a Siglip2Model for a NaFlex model."""
    kind = "siglip2" if cfg.naflex else "siglip"
    tower = lambda c: {
        "hidden_size": c.width,
        "num_hidden_layers": c.depth,
        "intermediate_size": c.mlp_dim,
        "num_attention_heads": c.heads,
        "hidden_act": HF_ACT[c.gelu or cfg.gelu],
        "layer_norm_eps": 1e-6,
    }
    vision = {**tower(cfg.image), "model_type": f"{kind}_vision_model", "patch_size": cfg.patch_size, "num_channels": 3}
    if cfg.naflex:
        vision["num_patches"] = (cfg.image_size // cfg.patch_size) ** 2
    else:
        vision["image_size"] = cfg.image_size
    text = {
        **tower(cfg.text),
        "model_type": f"{kind}_text_model",
        "max_position_embeddings": cfg.text_length,
        "vocab_size": cfg.vocab_size,
        "projection_size": cfg.out_dim,
    }
    arch = "Siglip2Model" if cfg.naflex else "SiglipModel"
    return {"architectures": [arch], "model_type": kind, "text_config": text, "vision_config": vision}


def write_hf_tokenizer(tok: Tokenizer, dst: Path) -> None:
    """spiece.model + SiglipTokenizer config (SigLIP 1: pad = EOS), or tokenizer.model + a
    GemmaTokenizer config padding on the right (SigLIP 2; transformers would pad on the left)."""
    piece = lambda i: tok.sp.id_to_piece(i)
    if tok.kind == "gemma":
        (dst / "tokenizer.model").write_bytes(tok.proto)
        special = {"eos_token": piece(tok.eos_id), "pad_token": piece(tok.pad_id), "unk_token": piece(tok.sp.unk_id())}
        if tok.sp.bos_id() >= 0:
            special["bos_token"] = piece(tok.sp.bos_id())
        cfg = {
            "tokenizer_class": "GemmaTokenizer",
            "add_bos_token": False,
            "add_eos_token": True,
            "padding_side": "right",
        }
    else:
        (dst / "spiece.model").write_bytes(tok.proto)
        special = {
            "eos_token": piece(tok.eos_id),
            "pad_token": piece(tok.eos_id),
            "unk_token": piece(max(tok.sp.unk_id(), 0)),
        }
        cfg = {"tokenizer_class": "SiglipTokenizer", "do_lower_case": True}
    cfg = {**cfg, "model_max_length": tok.length, **special}
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (dst / "special_tokens_map.json").write_text(json.dumps(special))


def hf_preprocessor_json(cfg: ModelConfig, pre: dict, pil_resample: int) -> dict:
    """preprocessor_config.json: SiglipImageProcessor (squash to S x S) or Siglip2ImageProcessor."""
    common = {
        "do_resize": True,
        "resample": pil_resample,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    if cfg.naflex:
        return {
            "image_processor_type": "Siglip2ImageProcessor",
            "processor_class": "Siglip2Processor",
            **common,
            "patch_size": cfg.patch_size,
            "max_num_patches": int(pre.get("max_num_patches", 256)),
        }
    size = int(pre["image_size"])
    return {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "SiglipProcessor",
        **common,
        "size": {"height": size, "width": size},
    }
