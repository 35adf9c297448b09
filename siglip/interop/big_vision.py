"""big_vision `two_towers` SigLIP checkpoints (.npz): `img/...` and `txt/...` arrays, with or without
the `params/` prefix, per-layer `encoderblock_{i}` or all layers stacked under `encoderblock`."""

from __future__ import annotations

import math
import re
from pathlib import Path

from torch import Tensor

from siglip.checkpoint import Payload
from siglip.config import ModelConfig, TowerConfig
from siglip.interop.rules import Rule, apply_rules
from siglip.interop.siglip2 import tokenizer_kind
from siglip.interop.tensors import find_tokenizer, make_payload, model_shapes, read_tensors

# Our module -> theirs inside one encoder block, and in the MAP head (Flax names).
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
BV_MAP = {
    "attn.q": "MultiHeadDotProductAttention_0/query",
    "attn.k": "MultiHeadDotProductAttention_0/key",
    "attn.v": "MultiHeadDotProductAttention_0/value",
    "attn.out": "MultiHeadDotProductAttention_0/out",
    "norm": "LayerNorm_0",
    "mlp.fc1": "MlpBlock_0/Dense_0",
    "mlp.fc2": "MlpBlock_0/Dense_1",
}


def bv_modules(ours: str, theirs: str, table: dict) -> list[Rule]:
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


def big_vision_rules(cfg: ModelConfig) -> list[Rule]:
    """big_vision two_towers (SPEC section 3), after `params/` is dropped and stacked blocks unstacked."""
    r = [
        Rule(("image.patch_embed.weight",), "img/embedding/kernel", "dense" if cfg.naflex else "conv"),
        Rule(("image.patch_embed.bias",), "img/embedding/bias"),
        Rule(("image.pos_embed",), "img/pos_embedding"),
    ]
    for i in range(cfg.image.depth):
        r += bv_modules(f"image.encoder.blocks.{i}", f"img/Transformer/encoderblock_{i}", BV_BLOCK)
    r += bv_modules("image.encoder", "img/Transformer", {"norm": "encoder_norm"})
    r.append(Rule(("image.head.probe",), "img/MAPHead_0/probe"))
    r += bv_modules("image.head", "img/MAPHead_0", BV_MAP)
    r += [Rule(("text.token_embed.weight",), "txt/Embed_0/embedding"), Rule(("text.pos_embed",), "txt/pos_embedding")]
    for i in range(cfg.text.depth):
        r += bv_modules(f"text.encoder.blocks.{i}", f"txt/Encoder_0/encoderblock_{i}", BV_BLOCK)
    r += bv_modules("text.encoder", "txt/Encoder_0", {"norm": "encoder_norm"})
    if cfg.text_head:
        r += bv_modules("text", "txt", {"head": "head"})
    return r + [Rule(("t_prime",), "t"), Rule(("b",), "b")]


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


def big_vision_config(arrays: dict[str, Tensor], where: str) -> ModelConfig:
    """Sizes from the arrays; big_vision's q kernel (D, heads, head_dim) gives the heads. Flax's
    nn.gelu is the tanh approximation."""

    def tower(prefix: str) -> TowerConfig:
        depth = len({k for k in arrays if re.match(rf"{prefix}/encoderblock_\d+/LayerNorm_0/scale$", k)})
        q = arrays[f"{prefix}/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"]
        mlp = arrays[f"{prefix}/encoderblock_0/MlpBlock_0/Dense_0/kernel"].shape[1]
        return TowerConfig(q.shape[0], depth, mlp, q.shape[1])

    image = tower("img/Transformer")
    kernel = arrays["img/embedding/kernel"]
    naflex = kernel.ndim == 2  # SigLIP 2 NaFlex: a Dense kernel (p*p*3, D) on flattened patches, not HWIO
    patch = math.isqrt(kernel.shape[0] // 3) if naflex else kernel.shape[0]
    n = arrays["img/pos_embedding"].numel() // image.width  # (1, N, D) or a (1, g, g, D) grid
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
        naflex=naflex,
    )


def read_big_vision(path: Path, tokenizer: str | Path | None, require_tokenizer: bool = True) -> Payload:
    arrays = unstack_big_vision(read_tensors(path))
    for need in ("img/embedding/kernel", "txt/Embed_0/embedding"):
        if need not in arrays:
            raise KeyError(f"{path}: .npz without {need!r}; not a big_vision SigLIP checkpoint")
    cfg = big_vision_config(arrays, str(path))
    sd = apply_rules(big_vision_rules(cfg), arrays, model_shapes(cfg), str(path))
    tok = find_tokenizer(path, tokenizer, require_tokenizer)
    kind = tokenizer_kind(path.parent, tok)
    return make_payload(cfg, sd, tok, "bilinear", kind=kind)  # big_vision resizes bilinearly
