"""Hugging Face `SiglipModel` and `Siglip2Model` (NaFlex) folders (and bare weights files, whole model
or one tower) in, and our model out as a folder that transformers reads back (`SiglipModel` or
`Siglip2Model`, with the tokenizer and processor configs of the matching kind)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from torch import Tensor

from siglip.checkpoint import Payload, tokenizer_from_payload
from siglip.config import ModelConfig, TowerConfig, model_config_from_dict
from siglip.interop.hub import SHARD_INDEXES
from siglip.interop.rules import Rule, apply_rules, torch_modules, unapply_rules
from siglip.interop.siglip2 import hf_max_num_patches, tokenizer_kind
from siglip.interop.tensors import (
    IGNORED,
    TokenizerFile,
    find_tokenizer,
    heads_for,
    make_payload,
    model_shapes,
    read_sharded,
    read_tensors,
)
from siglip.tokenizer import TOKENIZER_JSON, Tokenizer
from siglip.tokenizer_json import sentencepiece_to_json

# Our module -> theirs inside one encoder block.
HF_BLOCK = {
    "norm1": "layer_norm1",
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj",
    "norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
# The MAP head: our image.head.* -> theirs.
HF_MAP = {
    ("attn.q", "attn.k", "attn.v"): "attention.in_proj_",
    "attn.out": "attention.out_proj",
    "norm": "layernorm",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def hf_rules(cfg: ModelConfig, towers: tuple[str, ...] = ("image", "text")) -> list[Rule]:
    """Hugging Face SiglipModel names (SPEC section 3)."""
    r: list[Rule] = []
    if "image" in towers:
        v = "vision_model"
        r += torch_modules("image", f"{v}.embeddings", {"patch_embed": "patch_embedding"})
        r.append(Rule(("image.pos_embed",), f"{v}.embeddings.position_embedding.weight"))
        for i in range(cfg.image.depth):
            r += torch_modules(f"image.encoder.blocks.{i}", f"{v}.encoder.layers.{i}", HF_BLOCK)
        r += torch_modules("image.encoder", v, {"norm": "post_layernorm"})
        r.append(Rule(("image.head.probe",), f"{v}.head.probe"))
        r += torch_modules("image.head", f"{v}.head", HF_MAP)
    if "text" in towers:
        t = "text_model"
        r.append(Rule(("text.token_embed.weight",), f"{t}.embeddings.token_embedding.weight"))
        r.append(Rule(("text.pos_embed",), f"{t}.embeddings.position_embedding.weight"))
        for i in range(cfg.text.depth):
            r += torch_modules(f"text.encoder.blocks.{i}", f"{t}.encoder.layers.{i}", HF_BLOCK)
        r += torch_modules("text.encoder", t, {"norm": "final_layer_norm"})
        if cfg.text_head:
            r += torch_modules("text", t, {"head": "head"})
    if len(towers) == 2:
        r += [Rule(("t_prime",), "logit_scale"), Rule(("b",), "logit_bias")]
    return r


GELU = {"gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu": "exact"}
ACT = {"tanh": "gelu_pytorch_tanh", "exact": "gelu"}
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
MODEL_TYPES = {"siglip": "SiglipModel (fixed resolution)", "siglip2": "Siglip2Model (NaFlex)"}
TOWER_TYPES = ("siglip_vision_model", "siglip_text_model")
log = logging.getLogger(__name__)


def _hf_gelu(acts: set[str], where: str) -> str:
    gelus = {GELU.get(a) for a in acts}
    if None in gelus or len(gelus) != 1:
        raise ValueError(f"{where}: activations {sorted(acts)} not supported (one of {sorted(GELU)} for both towers)")
    return gelus.pop()


def hf_tower(c: dict, where: str, field: str) -> TowerConfig:
    """One tower of a config.json, its own GELU included. Options our towers do not have are errors
    naming the field (never a shape error later)."""
    act, eps = c.get("hidden_act", "gelu_pytorch_tanh"), c.get("layer_norm_eps", 1e-6)
    if act not in GELU:
        raise ValueError(f"{where}: {field}.hidden_act={act!r} not supported (one of {sorted(GELU)})")
    if abs(eps - 1e-6) > 1e-12:
        raise ValueError(f"{where}: {field}.layer_norm_eps={eps}; SigLIP towers use 1e-6")
    if c.get("num_channels", 3) != 3:
        raise ValueError(f"{where}: {field}.num_channels={c['num_channels']}; only RGB (3) image towers are supported")
    if not c.get("vision_use_head", True):
        raise ValueError(f"{where}: {field}.vision_use_head=false (no MAP head) is not a SigLIP image tower")
    sizes = [c.get(k, d) for k, d in (("hidden_size", 768), ("num_hidden_layers", 12), ("intermediate_size", 3072))]
    return TowerConfig(*sizes, c.get("num_attention_heads", 12), gelu=GELU[act])


def hf_config(cfg_json: dict, where: str) -> ModelConfig:
    """ModelConfig from a SiglipModel (model_type siglip) or Siglip2Model (siglip2, NaFlex) config.json."""
    kind = cfg_json.get("model_type")
    if kind not in MODEL_TYPES:
        known = ", ".join(f"{k!r}: {v}" for k, v in MODEL_TYPES.items())
        raise ValueError(f"{where}: model_type {kind!r} is not supported (model_type {known})")
    v, t = cfg_json.get("vision_config", {}), cfg_json.get("text_config", {})
    image, text = hf_tower(v, where, "vision_config"), hf_tower(t, where, "text_config")
    patch = int(v.get("patch_size", 16))
    image_size = int(v.get("image_size", 224))
    if kind == "siglip2":  # a (g, g) position grid, resized per image
        n = int(v.get("num_patches", 256))
        if math.isqrt(n) ** 2 != n:
            raise ValueError(f"{where}: vision_config.num_patches={n} is not a square position grid")
        image_size = math.isqrt(n) * patch
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


def _hf_resample(folder: Path, image_size: int, default: int = 3) -> str:
    """The processor's resize filter (default: SiglipImageProcessor's bicubic; 2, bilinear, for NaFlex)."""
    p = folder / "preprocessor_config.json"
    if not p.is_file():
        return PIL_RESAMPLE[default]
    pre = json.loads(p.read_text())
    for key in ("image_mean", "image_std"):
        if key in pre and any(abs(x - 0.5) > 1e-6 for x in pre[key]):
            raise ValueError(f"{p}: {key}={pre[key]}; this toolkit normalises with 0.5 (pixels in [-1, 1])")
    size = pre.get("size", {})
    if image_size and isinstance(size, dict) and size.get("height", image_size) != image_size:
        raise ValueError(f"{p}: size {size} differs from the model's image_size {image_size}")
    resample = pre.get("resample", default)
    if resample not in PIL_RESAMPLE:
        raise ValueError(f"{p}: resample {resample} not supported (0, 2 or 3)")
    return PIL_RESAMPLE[resample]


def _hf_weights(folder: Path) -> Path:
    """The folder's weights: one file, or the index of a checkpoint split into shards."""
    for name in ("model.safetensors", "pytorch_model.bin", *SHARD_INDEXES):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{folder}: Hugging Face folder without model.safetensors, pytorch_model.bin or a shard index "
        f"({', '.join(SHARD_INDEXES)})"
    )


def _add_tower_prefix(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """Standalone tower files: add vision_model./text_model. where it is missing."""
    if "embeddings.patch_embedding.weight" in state:
        return {f"vision_model.{k}": v for k, v in state.items()}, ("image",)
    if "embeddings.token_embedding.weight" in state:
        return {f"text_model.{k}": v for k, v in state.items()}, ("text",)
    towers = tuple(
        t for t, p in (("image", "vision_model."), ("text", "text_model.")) if any(k.startswith(p) for k in state)
    )
    return state, towers


def _hf_config_from_shapes(
    state: dict[str, Tensor], towers: tuple[str, ...], where: str, tower_json: dict | None = None
) -> ModelConfig:
    """A tower file: sizes from the tensors; heads and activation from the tower's config.json
    (SiglipVisionModel / SiglipTextModel) when there is one, else the size table and tanh GELU."""
    tower_json = tower_json or {}

    def tower(prefix: str) -> TowerConfig:
        depth = len({k.split(".")[3] for k in state if k.startswith(f"{prefix}.encoder.layers.")})
        fc1 = state[f"{prefix}.encoder.layers.0.mlp.fc1.weight"]
        heads = tower_json.get("num_attention_heads") or heads_for(fc1.shape[1], where)
        return TowerConfig(fc1.shape[1], depth, fc1.shape[0], heads)

    cfg = ModelConfig(variant="hf", gelu=_hf_gelu({tower_json.get("hidden_act", "gelu_pytorch_tanh")}, where))
    if state.get("vision_model.embeddings.patch_embedding.weight", torch.zeros(1, 1, 1, 1)).ndim != 4:
        raise ValueError(f"{where}: a NaFlex (Siglip2VisionModel) tower file: not yet supported; load the whole folder")
    if "image" in towers:
        cfg.image = cfg.text = tower("vision_model")
        patch = state["vision_model.embeddings.patch_embedding.weight"].shape[-1]
        n = state["vision_model.embeddings.position_embedding.weight"].shape[0]
        cfg.patch_size, cfg.image_size = patch, round(n**0.5) * patch
    if "text" in towers:
        cfg.text = tower("text_model")
        if "image" not in towers:
            cfg.image = cfg.text
        cfg.text_length, cfg.vocab_size = (
            state["text_model.embeddings.position_embedding.weight"].shape[0],
            state["text_model.embeddings.token_embedding.weight"].shape[0],
        )
        cfg.text_head = "text_model.head.weight" in state
        if cfg.text_head:
            cfg.embed_dim = state["text_model.head.weight"].shape[0]
    return cfg


def read_hf(path: Path, tokenizer: str | Path | None = None, require_tokenizer: bool = True) -> Payload:
    """A SiglipModel folder, or a bare Hugging Face weights file (full model or one tower)."""
    folder = path if path.is_dir() else path.parent
    weights = _hf_weights(path) if path.is_dir() else path
    tensors = read_sharded(weights) if weights.name in SHARD_INDEXES else read_tensors(weights)
    state = {k: v for k, v in tensors.items() if not IGNORED.search(k)}
    state, towers = _add_tower_prefix(state)
    cfg_path = folder / "config.json"
    cfg_json = json.loads(cfg_path.read_text()) if cfg_path.is_file() else None
    if cfg_json is not None and cfg_json.get("model_type") not in TOWER_TYPES:
        cfg = hf_config(cfg_json, str(cfg_path))  # siglip or siglip2; any other model_type is an error
        cfg.text_head = "text_model.head.weight" in state or "text" not in towers
    else:
        tower_json = cfg_json if cfg_json is not None and cfg_json.get("model_type") in TOWER_TYPES else None
        cfg = _hf_config_from_shapes(state, towers, str(weights), tower_json)
    rules = hf_rules(cfg, towers)
    sd = apply_rules(rules, state, model_shapes(cfg), str(weights))
    tok = find_tokenizer(folder, tokenizer, require_tokenizer) if "text" in towers or tokenizer else TokenizerFile()
    partial = "" if len(towers) == 2 else towers[0]
    resample = _hf_resample(folder, 0, 2) if cfg.naflex else _hf_resample(folder, cfg.image_size)
    kind = tokenizer_kind(folder, tok)
    max_patches = hf_max_num_patches(folder) if cfg.naflex else 0
    return make_payload(cfg, sd, tok, resample, partial, kind, max_patches)


# --------------------------------------------------------------------------------------------------
# Export to a Hugging Face SiglipModel folder: the inverse of the same rules


def _hf_shape(rule: Rule, x: Tensor) -> tuple[int, ...] | None:
    """Where HF stores a tensor in another shape than ours: (N, D) position tables, (1,) scalars."""
    if rule.theirs.endswith("position_embedding.weight"):
        return tuple(x.shape[-2:])
    if rule.theirs.startswith("logit_"):
        return (1,)
    return None


def hf_state(payload: Payload) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Our payload -> (config as exported, SiglipModel state dict)."""
    if payload.get("partial"):
        raise ValueError(f"a standalone {payload['partial']} tower cannot be exported as a SiglipModel")
    cfg = model_config_from_dict(payload["model_config"])
    ours = dict(payload["state_dict"])
    if not cfg.text_head:  # SiglipModel always has a text head: an identity one is exact
        ours["text.head.weight"] = torch.eye(cfg.text.width)
        ours["text.head.bias"] = torch.zeros(cfg.text.width)
        cfg.text_head = True
    if cfg.out_dim != cfg.image.width:
        raise ValueError(f"text head size {cfg.out_dim} != image width {cfg.image.width}: not a SiglipModel")
    return cfg, unapply_rules(hf_rules(cfg), ours, _hf_shape)


def hf_config_json(cfg: ModelConfig) -> dict:
    """config.json of a SiglipModel, or of a Siglip2Model for a NaFlex model; each tower's GELU."""
    kind = "siglip2" if cfg.naflex else "siglip"
    tower = lambda c: {
        "hidden_size": c.width,
        "num_hidden_layers": c.depth,
        "intermediate_size": c.mlp_dim,
        "num_attention_heads": c.heads,
        "hidden_act": ACT[c.gelu or cfg.gelu],
        "layer_norm_eps": 1e-6,
    }
    text = {"model_type": f"{kind}_text_model", "max_position_embeddings": cfg.text_length}
    text.update(vocab_size=cfg.vocab_size, projection_size=cfg.out_dim)
    vision = {"model_type": f"{kind}_vision_model", "patch_size": cfg.patch_size, "num_channels": 3}
    if cfg.naflex:
        vision["num_patches"] = (cfg.image_size // cfg.patch_size) ** 2
    else:
        vision["image_size"] = cfg.image_size
    return {
        "architectures": ["Siglip2Model" if cfg.naflex else "SiglipModel"],
        "model_type": kind,
        "text_config": {**tower(cfg.text), **text},
        "vision_config": {**tower(cfg.image), **vision},
    }


def hf_tokenizer_files(tok: Tokenizer) -> dict[str, bytes]:
    """spiece.model + SiglipTokenizer configs (SigLIP pads with EOS), or for the Gemma kind
    tokenizer.model + a GemmaTokenizer config padding on the right (transformers' default is left);
    both with the same vocabulary as tokenizer.json (where `tokenizers` is installed). A tokenizer
    read from a tokenizer.json-only folder is written back as tokenizer.json alone."""
    piece = tok.sp.id_to_piece
    if tok.kind == "gemma":
        special = {"eos_token": piece(tok.eos_id), "pad_token": piece(tok.pad_id), "unk_token": piece(tok.sp.unk_id())}
        if tok.sp.bos_id() >= 0:
            special["bos_token"] = piece(tok.sp.bos_id())
        tok_cfg = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": False, "add_eos_token": True}
        tok_cfg.update(padding_side="right", model_max_length=tok.length, **special)
        name = "tokenizer.model"
    else:
        special = {"eos_token": piece(tok.eos_id), "pad_token": piece(tok.eos_id)}
        special["unk_token"] = piece(max(tok.sp.unk_id(), 0))
        tok_cfg = {"tokenizer_class": "SiglipTokenizer", "model_max_length": tok.length, "do_lower_case": True}
        tok_cfg.update(special)
        name = "spiece.model"
    files = {
        "tokenizer_config.json": json.dumps(tok_cfg, indent=2).encode(),
        "special_tokens_map.json": json.dumps(special).encode(),
    }
    if tok.fmt == TOKENIZER_JSON:  # read from a tokenizer.json-only folder: no SentencePiece model to write
        if tok.kind == "siglip":  # transformers 5's SiglipTokenizer reads spiece.model only; T5's reads the json
            tok_cfg.update(tokenizer_class="T5Tokenizer", extra_ids=0)
            files["tokenizer_config.json"] = json.dumps(tok_cfg, indent=2).encode()
        return {"tokenizer.json": tok.proto, **files}
    try:  # transformers 5 reads tokenizer.json first; SigLIP 2 classes need it
        files["tokenizer.json"] = sentencepiece_to_json(tok.proto, tok.kind)
    except ImportError as e:
        log.warning("not writing tokenizer.json (%s); %s is written", e, name)
    return {name: tok.proto, **files}


def hf_preprocessor_json(cfg: ModelConfig, preprocess: dict) -> dict:
    """SiglipImageProcessor (squash to S x S), or Siglip2ImageProcessor for a NaFlex model."""
    common = {
        "do_resize": True,
        "resample": {v: k for k, v in PIL_RESAMPLE.items()}[preprocess["resample"]],
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    if cfg.naflex:
        naflex = {"patch_size": cfg.patch_size, "max_num_patches": int(preprocess.get("max_num_patches") or 256)}
        return {
            "image_processor_type": "Siglip2ImageProcessor",
            "processor_class": "Siglip2Processor",
            **common,
            **naflex,
        }
    size = int(preprocess["image_size"])
    return {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "SiglipProcessor",
        **common,
        "size": {"height": size, "width": size},
    }


def hf_vision_state(payload: Payload) -> tuple[ModelConfig, dict[str, Tensor], dict]:
    """Our payload's image tower -> (config, SiglipVisionModel / Siglip2VisionModel state dict and config.json)."""
    if payload.get("partial") == "text":
        raise ValueError("a standalone text tower has no image tower to export")
    cfg = model_config_from_dict(payload["model_config"])
    ours = {k: v for k, v in payload["state_dict"].items() if k.startswith("image.")}
    vision = hf_config_json(cfg)["vision_config"]
    arch = "Siglip2VisionModel" if cfg.naflex else "SiglipVisionModel"
    return cfg, unapply_rules(hf_rules(cfg, ("image",)), ours, _hf_shape), {"architectures": [arch], **vision}


def to_hf(payload: Payload, dst: str | Path, vision_only: bool = False) -> None:
    """Write config.json, model.safetensors, the tokenizer files and processor config that
    `SiglipModel`/`Siglip2Model.from_pretrained` and `AutoProcessor.from_pretrained` read; with
    `vision_only`, the image tower alone as `SiglipVisionModel`/`Siglip2VisionModel` reads it (no
    text weights, no tokenizer), for a VLM built on it."""
    from safetensors.torch import save_file

    if vision_only:
        cfg, theirs, config_json = hf_vision_state(payload)
    else:
        cfg, theirs = hf_state(payload)
        config_json = hf_config_json(cfg)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    save_file(theirs, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config_json, indent=2))
    for name, data in {} if vision_only else hf_tokenizer_files(tokenizer_from_payload(payload)).items():
        (dst / name).write_bytes(data)
    pre = hf_preprocessor_json(cfg, payload["preprocess"])
    (dst / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
