"""open_clip SigLIP checkpoints: a timm ViT image tower (`visual.trunk.*`) and open_clip's text
transformer (`text.*`). Sizes come from the tensors, heads from `open_clip_config.json` when present."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from torch import Tensor

from siglip.checkpoint import Payload
from siglip.config import ModelConfig, TowerConfig
from siglip.interop.hub import tokenizer_repo
from siglip.interop.rules import Rule, apply_rules, torch_modules
from siglip.interop.siglip2 import open_clip_gelus, tokenizer_kind
from siglip.interop.tensors import TokenizerFile, find_tokenizer, heads_for, make_payload, model_shapes

log = logging.getLogger(__name__)

# Our module -> theirs inside one encoder block. A tuple on our side is a fused projection.
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
# The MAP head: our image.head.* -> timm's attn_pool.
TIMM_MAP = {
    "attn.q": "q",
    ("attn.k", "attn.v"): "kv",
    "attn.out": "proj",
    "norm": "norm",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def open_clip_rules(cfg: ModelConfig) -> list[Rule]:
    """open_clip SigLIP: timm ViT (visual.trunk) + open_clip TextTransformer (text)."""
    v = "visual.trunk"
    r = torch_modules("image", v, {"patch_embed": "patch_embed.proj"})
    r.append(Rule(("image.pos_embed",), f"{v}.pos_embed"))
    for i in range(cfg.image.depth):
        r += torch_modules(f"image.encoder.blocks.{i}", f"{v}.blocks.{i}", TIMM_BLOCK)
    r += torch_modules("image.encoder", v, {"norm": "norm"})
    r.append(Rule(("image.head.probe",), f"{v}.attn_pool.latent"))
    r += torch_modules("image.head", f"{v}.attn_pool", TIMM_MAP)
    r.append(Rule(("text.token_embed.weight",), "text.token_embedding.weight"))
    r.append(Rule(("text.pos_embed",), "text.positional_embedding"))
    for i in range(cfg.text.depth):
        r += torch_modules(f"text.encoder.blocks.{i}", f"text.transformer.resblocks.{i}", OPEN_CLIP_TEXT_BLOCK)
    r += torch_modules("text.encoder", "text", {"norm": "ln_final"})
    if cfg.text_head:
        r += torch_modules("text", "text", {"head": "text_projection"})
    return r + [Rule(("t_prime",), "logit_scale"), Rule(("b",), "logit_bias")]


def open_clip_config(state: dict[str, Tensor], where: Path, kind: str = "siglip") -> ModelConfig:
    """Sizes from the tensors; heads from open_clip_config.json beside the file when present (text
    heads are written there), else from the size table. GELU per tower (`open_clip_gelus`): exact
    (erf) in the SigLIP 1 towers, tanh in SigLIP 2 text towers and in some timm trunks."""
    v = "visual.trunk"
    count = lambda p: len({k[len(p) :].split(".")[0] for k in state if k.startswith(p)})
    img_w, text_w = state[f"{v}.pos_embed"].shape[-1], state["text.positional_embedding"].shape[-1]
    cfg_file = (where if where.is_dir() else where.parent) / "open_clip_config.json"
    cfg_json = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    text_heads = cfg_json.get("model_cfg", {}).get("text_cfg", {}).get("heads")
    image_gelu, text_gelu = open_clip_gelus(cfg_json, kind)
    patch = state[f"{v}.patch_embed.proj.weight"].shape[-1]
    n = state[f"{v}.pos_embed"].shape[1]
    head = state.get("text.text_projection.weight")
    return ModelConfig(
        variant="open_clip",
        image=TowerConfig(
            img_w,
            count(f"{v}.blocks."),
            state[f"{v}.blocks.0.mlp.fc1.weight"].shape[0],
            heads_for(img_w, str(where)),
            image_gelu,
        ),
        text=TowerConfig(
            text_w,
            count("text.transformer.resblocks."),
            state["text.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            text_heads or heads_for(text_w, str(where)),
            text_gelu,
        ),
        image_size=round(n**0.5) * patch,
        patch_size=patch,
        text_length=state["text.positional_embedding"].shape[0],
        vocab_size=state["text.token_embedding.weight"].shape[0],
        embed_dim=0 if head is None or head.shape[0] == img_w else head.shape[0],
        text_head=head is not None,
        gelu="exact",
    )


def open_clip_tokenizer(path: Path, tokenizer: str | Path | None, required: bool) -> TokenizerFile:
    """`tokenizer` when given, else the one beside the weights, else the repo that open_clip's config
    names (text_cfg.hf_tokenizer_name: a model pushed without its tokenizer files keeps it there),
    fetched by its Hub id. Not `required` (an image-only load): a failure there is a warning."""
    elsewhere = "" if tokenizer else tokenizer_repo(path)
    tok = find_tokenizer(path, tokenizer, required and not elsewhere)
    if tok.data or not elsewhere:
        return tok
    log.info("%s: no tokenizer beside the weights; open_clip's config names %s", path, elsewhere)
    try:
        return find_tokenizer(path, elsewhere)
    except (FileNotFoundError, ModuleNotFoundError) as e:  # a HubError, or no huggingface_hub
        if required:
            raise FileNotFoundError(f"{path}: the tokenizer open_clip_config.json names: {e}") from e
        log.warning("%s: loaded without a tokenizer (%s)", path, e)
        return tok


def read_open_clip(
    path: Path, state: dict[str, Tensor], tokenizer: str | Path | None, require_tokenizer: bool = True
) -> Payload:
    if "text.text_projection" in state:
        raise ValueError(f"{path}: text_projection without bias (a CLIP-style text tower), not a SigLIP checkpoint")
    tok = open_clip_tokenizer(path, tokenizer, require_tokenizer)
    kind = tokenizer_kind(path if path.is_dir() else path.parent, tok)
    cfg = open_clip_config(state, path, kind)
    sd = apply_rules(open_clip_rules(cfg), state, model_shapes(cfg), str(path))
    resample = "bicubic"
    cfg_file = (path if path.is_dir() else path.parent) / "open_clip_config.json"
    if cfg_file.is_file():
        resample = json.loads(cfg_file.read_text()).get("preprocess_cfg", {}).get("interpolation", "bicubic")
    return make_payload(cfg, sd, tok, resample, kind=kind)
