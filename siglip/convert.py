"""Published SigLIP checkpoints in and out: Hugging Face, open_clip, big_vision -> our model file, and
ours -> a Hugging Face SiglipModel folder.

    python -m siglip.convert /models/siglip-base-patch16-224 siglip_b16.pt --to siglip
    python -m siglip.convert ./checkpoints/siglip_finetune.pt ./export --to hf
    python -m siglip.convert big_vision_b16.npz b16.pt --to siglip --tokenizer cc_en.model

Every reader returns our payload (see `siglip.checkpoint`): model_config, state_dict in OUR parameter
names, tokenizer proto + length, preprocess {image_size, resample}. Training and loading downstream do
not know which format a model came from. Formats are detected from the content:

- our model file: a torch file whose top-level dict has format == "siglip";
- Hugging Face: a folder with config.json (model_type siglip) and model.safetensors or
  pytorch_model.bin, plus spiece.model and preprocessor_config.json; or a bare weights file whose keys
  start with vision_model./text_model. (a standalone tower file may lack that prefix);
- open_clip: keys under visual.trunk.* (timm image tower) and text.* (open_clip text tower);
- big_vision: an .npz with img/... and txt/... arrays, with or without the params/ prefix, per-layer
  encoderblock_{i} or all layers stacked under encoderblock.

The key maps are data (tables below). Every source tensor is consumed by a rule or the conversion
fails naming it, so a checkpoint with a part this model does not have is never loaded half-way.
"""

from __future__ import annotations

import argparse
import json
import re
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .checkpoint import FORMAT, VERSION, check_payload, verify_digest
from .config import SIZES, ModelConfig, TowerConfig
from .model import SigLIP, resize_pos_embed

# --------------------------------------------------------------------------------------------------
# Key maps. A rule maps one source tensor to one or more of our tensors:
#   copy   reshape to our shape (also (N, D) <-> (1, N, D) position embeddings, (1,) <-> () scalars)
#   split  rows [q; k; v] (or [k; v]) of a fused projection -> our separate tensors
#   dense  big_vision kernel [in, out] (q/k/v: (D, heads, head_dim); out: (heads, head_dim, D)) -> weight (out, in)
#   conv   big_vision patch kernel HWIO -> OIHW


@dataclass(frozen=True)
class Rule:
    ours: tuple[str, ...]
    theirs: str
    kind: str = "copy"


# Our module -> their module inside one encoder block. A tuple on our side is a fused projection.
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
TIMM_BLOCK = {
    "norm1": "norm1",
    ("attn.q", "attn.k", "attn.v"): "attn.qkv",
    "attn.out": "attn.proj",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
OPEN_CLIP_TEXT_BLOCK = {
    "norm1": "ln_1",
    ("attn.q", "attn.k", "attn.v"): "attn.in_proj_",  # in_proj_weight, in_proj_bias
    "attn.out": "attn.out_proj",
    "norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
BV_BLOCK = {
    "norm1": "LayerNorm_0",
    "attn.q": "MultiHeadDotProductAttention_0/query",
    "attn.k": "MultiHeadDotProductAttention_0/key",
    "attn.v": "MultiHeadDotProductAttention_0/value",
    "attn.out": "MultiHeadDotProductAttention_0/out",
    "norm2": "LayerNorm_1",
    "mlp.fc1": "MlpBlock_0/Dense_0",
    "mlp.fc2": "MlpBlock_0/Dense_1",
}
# The MAP head: our image.head.* -> theirs.
HF_MAP = {
    ("attn.q", "attn.k", "attn.v"): "attention.in_proj_",
    "attn.out": "attention.out_proj",
    "norm": "layernorm",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
TIMM_MAP = {
    "attn.q": "q",
    ("attn.k", "attn.v"): "kv",
    "attn.out": "proj",
    "norm": "norm",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
BV_MAP = {
    "attn.q": "MultiHeadDotProductAttention_0/query",
    "attn.k": "MultiHeadDotProductAttention_0/key",
    "attn.v": "MultiHeadDotProductAttention_0/value",
    "attn.out": "MultiHeadDotProductAttention_0/out",
    "norm": "LayerNorm_0",
    "mlp.fc1": "MlpBlock_0/Dense_0",
    "mlp.fc2": "MlpBlock_0/Dense_1",
}


def _torch_modules(ours: str, theirs: str, table: dict) -> list[Rule]:
    """PyTorch-named modules: .weight/.bias, fused ones as in_proj_weight/in_proj_bias or qkv.weight."""
    rules = []
    for o, t in table.items():
        if isinstance(o, tuple):
            sep = "" if t.endswith("_") else "."
            for p in ("weight", "bias"):
                rules.append(Rule(tuple(f"{ours}.{x}.{p}" for x in o), f"{theirs}.{t}{sep}{p}", "split"))
        else:
            rules += [Rule((f"{ours}.{o}.{p}",), f"{theirs}.{t}.{p}") for p in ("weight", "bias")]
    return rules


def _bv_modules(ours: str, theirs: str, table: dict) -> list[Rule]:
    """Flax-named modules: LayerNorm scale/bias, Dense kernel [in, out]/bias."""
    rules = []
    for o, t in table.items():
        if "norm" in o:
            rules += [
                Rule((f"{ours}.{o}.weight",), f"{theirs}/{t}/scale"),
                Rule((f"{ours}.{o}.bias",), f"{theirs}/{t}/bias"),
            ]
        else:
            rules += [
                Rule((f"{ours}.{o}.weight",), f"{theirs}/{t}/kernel", "dense"),
                Rule((f"{ours}.{o}.bias",), f"{theirs}/{t}/bias"),
            ]
    return rules


def hf_rules(cfg: ModelConfig, towers: tuple[str, ...] = ("image", "text")) -> list[Rule]:
    """Hugging Face SiglipModel names (SPEC section 3)."""
    r: list[Rule] = []
    if "image" in towers:
        v = "vision_model"
        r += _torch_modules("image", f"{v}.embeddings", {"patch_embed": "patch_embedding"})
        r.append(Rule(("image.pos_embed",), f"{v}.embeddings.position_embedding.weight"))
        for i in range(cfg.image.depth):
            r += _torch_modules(f"image.encoder.blocks.{i}", f"{v}.encoder.layers.{i}", HF_BLOCK)
        r += _torch_modules("image.encoder", v, {"norm": "post_layernorm"})
        r.append(Rule(("image.head.probe",), f"{v}.head.probe"))
        r += _torch_modules("image.head", f"{v}.head", HF_MAP)
    if "text" in towers:
        t = "text_model"
        r.append(Rule(("text.token_embed.weight",), f"{t}.embeddings.token_embedding.weight"))
        r.append(Rule(("text.pos_embed",), f"{t}.embeddings.position_embedding.weight"))
        for i in range(cfg.text.depth):
            r += _torch_modules(f"text.encoder.blocks.{i}", f"{t}.encoder.layers.{i}", HF_BLOCK)
        r += _torch_modules("text.encoder", t, {"norm": "final_layer_norm"})
        if cfg.text_head:
            r += _torch_modules("text", t, {"head": "head"})
    if len(towers) == 2:
        r += [Rule(("t_prime",), "logit_scale"), Rule(("b",), "logit_bias")]
    return r


def open_clip_rules(cfg: ModelConfig) -> list[Rule]:
    """open_clip SigLIP: timm ViT (visual.trunk) + open_clip TextTransformer (text)."""
    v = "visual.trunk"
    r = _torch_modules("image", v, {"patch_embed": "patch_embed.proj"})
    r.append(Rule(("image.pos_embed",), f"{v}.pos_embed"))
    for i in range(cfg.image.depth):
        r += _torch_modules(f"image.encoder.blocks.{i}", f"{v}.blocks.{i}", TIMM_BLOCK)
    r += _torch_modules("image.encoder", v, {"norm": "norm"})
    r.append(Rule(("image.head.probe",), f"{v}.attn_pool.latent"))
    r += _torch_modules("image.head", f"{v}.attn_pool", TIMM_MAP)
    r.append(Rule(("text.token_embed.weight",), "text.token_embedding.weight"))
    r.append(Rule(("text.pos_embed",), "text.positional_embedding"))
    for i in range(cfg.text.depth):
        r += _torch_modules(f"text.encoder.blocks.{i}", f"text.transformer.resblocks.{i}", OPEN_CLIP_TEXT_BLOCK)
    r += _torch_modules("text.encoder", "text", {"norm": "ln_final"})
    if cfg.text_head:
        r += _torch_modules("text", "text", {"head": "text_projection"})
    return r + [Rule(("t_prime",), "logit_scale"), Rule(("b",), "logit_bias")]


def big_vision_rules(cfg: ModelConfig) -> list[Rule]:
    """big_vision two_towers (SPEC section 3), after `params/` is dropped and stacked blocks unstacked."""
    r = [
        Rule(("image.patch_embed.weight",), "img/embedding/kernel", "conv"),
        Rule(("image.patch_embed.bias",), "img/embedding/bias"),
        Rule(("image.pos_embed",), "img/pos_embedding"),
    ]
    for i in range(cfg.image.depth):
        r += _bv_modules(f"image.encoder.blocks.{i}", f"img/Transformer/encoderblock_{i}", BV_BLOCK)
    r += _bv_modules("image.encoder", "img/Transformer", {"norm": "encoder_norm"})
    r.append(Rule(("image.head.probe",), "img/MAPHead_0/probe"))
    r += _bv_modules("image.head", "img/MAPHead_0", BV_MAP)
    r += [Rule(("text.token_embed.weight",), "txt/Embed_0/embedding"), Rule(("text.pos_embed",), "txt/pos_embedding")]
    for i in range(cfg.text.depth):
        r += _bv_modules(f"text.encoder.blocks.{i}", f"txt/Encoder_0/encoderblock_{i}", BV_BLOCK)
    r += _bv_modules("text.encoder", "txt/Encoder_0", {"norm": "encoder_norm"})
    if cfg.text_head:
        r += _bv_modules("text", "txt", {"head": "head"})
    return r + [Rule(("t_prime",), "t"), Rule(("b",), "b")]


def apply_rules(
    rules: list[Rule], src: dict[str, Tensor], shapes: dict[str, torch.Size], where: str
) -> dict[str, Tensor]:
    """Source tensors -> our state dict (float32). Fails naming the key when a source tensor is
    missing, has the wrong size, or is left over."""
    src = dict(src)
    out: dict[str, Tensor] = {}
    for rule in rules:
        if rule.theirs not in src:
            raise KeyError(f"{where}: missing tensor {rule.theirs!r} (needed for {', '.join(rule.ours)})")
        x = src.pop(rule.theirs).float()
        if rule.kind == "split":
            parts = x.chunk(len(rule.ours), dim=0)
        elif rule.kind == "dense":
            s = shapes[rule.ours[0]]
            parts = (x.reshape(s[1], s[0]).T if len(s) == 2 else x,)
        elif rule.kind == "conv":
            parts = (x.permute(3, 2, 0, 1),)
        else:
            parts = (x,)
        for name, p in zip(rule.ours, parts):
            if p.numel() != shapes[name].numel():
                raise ValueError(
                    f"{where}: {rule.theirs!r} has shape {tuple(x.shape)}, which does not fit {name} {tuple(shapes[name])}"
                )
            out[name] = p.reshape(shapes[name]).contiguous()
    if src:
        left = sorted(src)
        raise KeyError(f"{where}: {len(left)} tensors this model has no place for: {left[:8]}")
    return out


# --------------------------------------------------------------------------------------------------
# Reading tensors safely (no pickled code is ever run)

IGNORED = re.compile(r"(^|\.)position_ids$")  # HF buffers (arange), saved by older transformers


def _is_npz(path: Path) -> bool:
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
    if _is_npz(path):
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


def unstack_big_vision(arrays: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop `params/`; split `.../encoderblock/...` arrays (leading layer axis) into encoderblock_{i}."""
    out = {}
    for k, v in arrays.items():
        k = k.removeprefix("params/")
        if "/encoderblock/" in k:
            for i in range(v.shape[0]):
                out[k.replace("/encoderblock/", f"/encoderblock_{i}/")] = v[i]
        else:
            out[k] = v
    return out


def find_tokenizer(where: Path, explicit: str | Path | None) -> bytes:
    """The SentencePiece model: `explicit`, else spiece.model / tokenizer.model / the one *.model
    beside the checkpoint."""
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


def _payload(cfg: ModelConfig, state: dict[str, Tensor], proto: bytes, resample: str, partial: str = "") -> dict:
    out = {
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


def _shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in SigLIP(cfg).state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Hugging Face

GELU = {"gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu": "exact"}
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _hf_gelu(acts: set[str], where: str) -> str:
    gelus = {GELU.get(a) for a in acts}
    if None in gelus or len(gelus) != 1:
        raise ValueError(f"{where}: activations {sorted(acts)} not supported (one of {sorted(GELU)} for both towers)")
    return gelus.pop()


def hf_config(cfg_json: dict, where: str) -> ModelConfig:
    """ModelConfig from a SiglipModel config.json."""
    if cfg_json.get("model_type") != "siglip":
        raise ValueError(f"{where}: model_type {cfg_json.get('model_type')!r}, expected 'siglip'")
    v, t = cfg_json.get("vision_config", {}), cfg_json.get("text_config", {})
    if not v.get("vision_use_head", True):
        raise ValueError(f"{where}: vision_use_head=false (no MAP head) is not a SigLIP image tower")
    tower = lambda c: TowerConfig(
        c.get("hidden_size", 768),
        c.get("num_hidden_layers", 12),
        c.get("intermediate_size", 3072),
        c.get("num_attention_heads", 12),
    )
    image, text = tower(v), tower(t)
    proj = t.get("projection_size") or text.width
    return ModelConfig(
        variant="hf",
        image=image,
        text=text,
        image_size=int(v.get("image_size", 224)),
        patch_size=int(v.get("patch_size", 16)),
        text_length=int(t.get("max_position_embeddings", 64)),
        vocab_size=int(t.get("vocab_size", 32000)),
        embed_dim=0 if proj == image.width else proj,
        text_head=True,
        gelu=_hf_gelu({v.get("hidden_act", "gelu_pytorch_tanh"), t.get("hidden_act", "gelu_pytorch_tanh")}, where),
    )


def _hf_resample(folder: Path, image_size: int) -> str:
    p = folder / "preprocessor_config.json"
    if not p.is_file():
        return "bicubic"
    pre = json.loads(p.read_text())
    for key in ("image_mean", "image_std"):
        if key in pre and any(abs(x - 0.5) > 1e-6 for x in pre[key]):
            raise ValueError(f"{p}: {key}={pre[key]}; this toolkit normalises with 0.5 (pixels in [-1, 1])")
    size = pre.get("size", {})
    if isinstance(size, dict) and size.get("height", image_size) != image_size:
        raise ValueError(f"{p}: size {size} differs from the model's image_size {image_size}")
    resample = pre.get("resample", 3)
    if resample not in PIL_RESAMPLE:
        raise ValueError(f"{p}: resample {resample} not supported (0, 2 or 3)")
    return PIL_RESAMPLE[resample]


def _hf_weights(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: Hugging Face folder without model.safetensors or pytorch_model.bin")


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


def read_hf(path: Path, tokenizer: str | Path | None = None) -> dict:
    """A SiglipModel folder, or a bare Hugging Face weights file (full model or one tower)."""
    folder = path if path.is_dir() else path.parent
    weights = _hf_weights(path) if path.is_dir() else path
    state = {k: v for k, v in read_tensors(weights).items() if not IGNORED.search(k)}
    state, towers = _add_tower_prefix(state)
    cfg_path = folder / "config.json"
    cfg_json = json.loads(cfg_path.read_text()) if cfg_path.is_file() else None
    if cfg_json is not None and cfg_json.get("model_type") == "siglip":
        cfg = hf_config(cfg_json, str(cfg_path))
        cfg.text_head = "text_model.head.weight" in state or "text" not in towers
    else:
        tower_types = ("siglip_vision_model", "siglip_text_model")
        tower_json = cfg_json if cfg_json is not None and cfg_json.get("model_type") in tower_types else None
        cfg = _hf_config_from_shapes(state, towers, str(weights), tower_json)
    rules = hf_rules(cfg, towers)
    sd = apply_rules(rules, state, _shapes(cfg), str(weights))
    proto = find_tokenizer(folder, tokenizer) if "text" in towers or tokenizer else b""
    partial = "" if len(towers) == 2 else towers[0]
    return _payload(cfg, sd, proto, _hf_resample(folder, cfg.image_size), partial)


# --------------------------------------------------------------------------------------------------
# open_clip and big_vision: sizes come from the tensors


def open_clip_config(state: dict[str, Tensor], where: Path) -> ModelConfig:
    """Sizes from the tensors; heads from open_clip_config.json beside the file when present (text
    heads are written there), else from the size table. open_clip's towers use exact (erf) GELU."""
    v = "visual.trunk"
    count = lambda p: len({k[len(p) :].split(".")[0] for k in state if k.startswith(p)})
    img_w, text_w = state[f"{v}.pos_embed"].shape[-1], state["text.positional_embedding"].shape[-1]
    text_heads = None
    cfg_file = (where if where.is_dir() else where.parent) / "open_clip_config.json"
    if cfg_file.is_file():
        text_heads = json.loads(cfg_file.read_text()).get("model_cfg", {}).get("text_cfg", {}).get("heads")
    patch = state[f"{v}.patch_embed.proj.weight"].shape[-1]
    n = state[f"{v}.pos_embed"].shape[1]
    head = state.get("text.text_projection.weight")
    return ModelConfig(
        variant="open_clip",
        image=TowerConfig(
            img_w, count(f"{v}.blocks."), state[f"{v}.blocks.0.mlp.fc1.weight"].shape[0], heads_for(img_w, str(where))
        ),
        text=TowerConfig(
            text_w,
            count("text.transformer.resblocks."),
            state["text.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            text_heads or heads_for(text_w, str(where)),
        ),
        image_size=round(n**0.5) * patch,
        patch_size=patch,
        text_length=state["text.positional_embedding"].shape[0],
        vocab_size=state["text.token_embedding.weight"].shape[0],
        embed_dim=0 if head is None or head.shape[0] == img_w else head.shape[0],
        text_head=head is not None,
        gelu="exact",
    )


def read_open_clip(path: Path, state: dict[str, Tensor], tokenizer: str | Path | None) -> dict:
    if "text.text_projection" in state:
        raise ValueError(f"{path}: text_projection without bias (a CLIP-style text tower), not a SigLIP checkpoint")
    cfg = open_clip_config(state, path)
    sd = apply_rules(open_clip_rules(cfg), state, _shapes(cfg), str(path))
    resample = "bicubic"
    cfg_file = (path if path.is_dir() else path.parent) / "open_clip_config.json"
    if cfg_file.is_file():
        resample = json.loads(cfg_file.read_text()).get("preprocess_cfg", {}).get("interpolation", "bicubic")
    return _payload(cfg, sd, find_tokenizer(path, tokenizer), resample)


def big_vision_config(arrays: dict[str, Tensor], where: str) -> ModelConfig:
    """Sizes from the arrays; big_vision's q kernel (D, heads, head_dim) gives the heads. Flax's
    nn.gelu is the tanh approximation."""

    def tower(prefix: str) -> TowerConfig:
        depth = len({k for k in arrays if re.match(rf"{prefix}/encoderblock_\d+/LayerNorm_0/scale$", k)})
        q = arrays[f"{prefix}/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"]
        mlp = arrays[f"{prefix}/encoderblock_0/MlpBlock_0/Dense_0/kernel"].shape[1]
        return TowerConfig(q.shape[0], depth, mlp, q.shape[1])

    patch = arrays["img/embedding/kernel"].shape[0]
    n = arrays["img/pos_embedding"].shape[1]
    image = tower("img/Transformer")
    head = arrays.get("txt/head/kernel")
    return ModelConfig(
        variant="big_vision",
        image=image,
        text=tower("txt/Encoder_0"),
        image_size=round(n**0.5) * patch,
        patch_size=patch,
        text_length=arrays["txt/pos_embedding"].shape[1],
        vocab_size=arrays["txt/Embed_0/embedding"].shape[0],
        embed_dim=0 if head is None or head.shape[1] == image.width else head.shape[1],
        text_head=head is not None,
        gelu="tanh",
    )


def read_big_vision(path: Path, tokenizer: str | Path | None) -> dict:
    arrays = unstack_big_vision(read_tensors(path))
    for need in ("img/embedding/kernel", "txt/Embed_0/embedding"):
        if need not in arrays:
            raise KeyError(f"{path}: .npz without {need!r}; not a big_vision SigLIP checkpoint")
    cfg = big_vision_config(arrays, str(path))
    sd = apply_rules(big_vision_rules(cfg), arrays, _shapes(cfg), str(path))
    return _payload(cfg, sd, find_tokenizer(path, tokenizer), "bilinear")  # big_vision resizes bilinearly


# --------------------------------------------------------------------------------------------------
# Detection


def load_payload(path: str | Path, tokenizer: str | Path | None = None) -> dict:
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
    if _is_npz(path):
        return read_big_vision(path, tokenizer)
    verify_digest(path)  # our files carry a .sha256: a flipped bit in the weights fails here, naming the file
    state = read_tensors(path)
    if state.get("format") == FORMAT:
        return check_payload(state, path)  # read once
    if any(k.startswith("visual.trunk.") for k in state):
        return read_open_clip(path, state, tokenizer)
    hf_keys = ("vision_model.", "text_model.", "embeddings.patch_embedding.", "embeddings.token_embedding.")
    if any(k.startswith(hf_keys) for k in state):
        return read_hf(path, tokenizer)
    raise ValueError(
        f"{path}: unknown checkpoint format (first keys {sorted(state)[:5]}); expected our model file, Hugging "
        "Face SigLIP (vision_model./text_model.), open_clip SigLIP (visual.trunk./text.) or a big_vision .npz"
    )


# --------------------------------------------------------------------------------------------------
# Fine-tuning entry point


def load_pretrained(path: str | Path, tokenizer: str | Path | None = None, image_size: int = 0) -> dict:
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


def load_into(model: SigLIP, payload: dict, where: str | Path) -> None:
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


# --------------------------------------------------------------------------------------------------
# Export to a Hugging Face SiglipModel folder


def to_hf(payload: dict, dst: str | Path) -> None:
    """Write config.json, model.safetensors, spiece.model and the tokenizer/processor configs that
    `SiglipModel.from_pretrained` and `SiglipProcessor.from_pretrained` read."""
    from safetensors.torch import save_file

    from .config import model_config_from_dict
    from .tokenizer import Tokenizer

    if payload.get("partial"):
        raise ValueError(f"a standalone {payload['partial']} tower cannot be exported as a SiglipModel")
    cfg = model_config_from_dict(payload["model_config"])
    ours = dict(payload["state_dict"])
    if not cfg.text_head:  # SiglipModel always has a text head: an identity one is exact
        ours["text.head.weight"] = torch.eye(cfg.text.width)
        cfg.text_head = True
        ours["text.head.bias"] = torch.zeros(cfg.text.width)
    if cfg.out_dim != cfg.image.width:
        raise ValueError(f"text head size {cfg.out_dim} != image width {cfg.image.width}: not a SiglipModel")
    theirs: dict[str, Tensor] = {}
    for rule in hf_rules(cfg):
        x = [ours.pop(o).float() for o in rule.ours]
        if rule.kind == "split":
            theirs[rule.theirs] = torch.cat(x, 0)
        elif rule.theirs.endswith("position_embedding.weight"):
            theirs[rule.theirs] = x[0][0]  # (1, N, D) -> (N, D)
        elif rule.theirs.startswith("logit_"):
            theirs[rule.theirs] = x[0].reshape(1)
        else:
            theirs[rule.theirs] = x[0]
    if ours:
        raise KeyError(f"tensors with no Hugging Face name: {sorted(ours)[:8]}")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in theirs.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    act = "gelu_pytorch_tanh" if cfg.gelu == "tanh" else "gelu"
    tower = lambda c: {
        "hidden_size": c.width,
        "num_hidden_layers": c.depth,
        "intermediate_size": c.mlp_dim,
        "num_attention_heads": c.heads,
        "hidden_act": act,
        "layer_norm_eps": 1e-6,
    }
    config = {
        "architectures": ["SiglipModel"],
        "model_type": "siglip",
        "text_config": {
            **tower(cfg.text),
            "model_type": "siglip_text_model",
            "max_position_embeddings": cfg.text_length,
            "vocab_size": cfg.vocab_size,
            "projection_size": cfg.out_dim,
        },
        "vision_config": {
            **tower(cfg.image),
            "model_type": "siglip_vision_model",
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
            "num_channels": 3,
        },
    }
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    tok = Tokenizer(payload["tokenizer"]["proto"].numpy().tobytes(), int(payload["tokenizer"]["length"]))
    (dst / "spiece.model").write_bytes(tok.proto)
    eos, unk = tok.sp.id_to_piece(tok.eos_id), tok.sp.id_to_piece(max(tok.sp.unk_id(), 0))
    tok_cfg = {
        "tokenizer_class": "SiglipTokenizer",
        "model_max_length": tok.length,
        "do_lower_case": True,
        "eos_token": eos,
        "pad_token": eos,  # SigLIP pads with EOS
        "unk_token": unk,
    }
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    (dst / "special_tokens_map.json").write_text(
        json.dumps({k: tok_cfg[k] for k in ("eos_token", "pad_token", "unk_token")})
    )
    resample = {v: k for k, v in PIL_RESAMPLE.items()}[payload["preprocess"]["resample"]]
    size = int(payload["preprocess"]["image_size"])
    pre = {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "SiglipProcessor",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": resample,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (dst / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    from .checkpoint import atomic_save

    parser = argparse.ArgumentParser(
        prog="python -m siglip.convert",
        description="Convert a SigLIP checkpoint (ours, Hugging Face, open_clip, big_vision) to our model file or a Hugging Face folder.",
    )
    parser.add_argument("src", help="checkpoint file or folder (format detected from its content)")
    parser.add_argument("dst", help="our model file (.pt) for --to siglip, a folder for --to hf")
    parser.add_argument("--to", choices=("siglip", "hf"), required=True)
    parser.add_argument("--tokenizer", default=None, help="SentencePiece model, if not beside SRC")
    args = parser.parse_args(argv)
    payload = load_payload(args.src, args.tokenizer)
    if args.to == "hf":
        to_hf(payload, args.dst)
    else:
        keep = ("format", "version", "model_config", "state_dict", "tokenizer", "preprocess", "partial")
        atomic_save({k: payload[k] for k in keep if k in payload}, args.dst)  # no optimizer state
    cfg = payload["model_config"]
    print(
        f"{args.src} -> {args.dst} ({args.to}): image {cfg['image']['width']}x{cfg['image']['depth']} "
        f"at {cfg['image_size']} px, text {cfg['text']['width']}x{cfg['text']['depth']}, L={cfg['text_length']}"
    )


if __name__ == "__main__":
    main()
