"""Faster inference on the CPU: the same towers with their weights pre-packed for oneDNN.

`encode_image(model, pixels)` and `encode_text(model, ids)` return what `model.encode_image` and
`model.encode_text` return, and are what `siglip.load(...)`'s `Model`, the `siglip` command and the
evaluations call. On a CPU, in fp32 or bf16 (bf16 weights, or fp32 weights under bf16 autocast), they
run a copy of the tower in which
- every Linear's weight is cast once and reordered into oneDNN's blocked layout
  (`torch.ops.mkldnn._reorder_linear_weight`), instead of being cast by autocast and reordered by
  the matmul on every call;
- the MLP's GELU runs inside fc1's product (a oneDNN post-op), not as a pass of its own;
- the attention's q, k, v projections run as one product over their concatenated weights (k, v for
  the MAP head's cross-attention).
The maths is the module's: outputs agree to about 1e-6 in fp32 and to bf16 rounding under
autocast (`tests/test_inference.py`). Elsewhere (a GPU, fp16, sharded parameters, a build of torch
without oneDNN) the module itself runs. The packed copy has no autograd graph, so it runs only where
autograd cannot need one: under `torch.no_grad()` / `torch.inference_mode()`, or when neither the
tower's parameters nor the inputs require grad. Everywhere else the module runs, in eval mode too,
and gradients flow as through the module (`tests/test_embedding_path.py`).

The packed copy is made at the first call and kept while the weights are unchanged: it is keyed on
each parameter's storage and version counter, so an optimizer step or `load_state_dict` between two
evaluations repacks. It costs the weights once more in the packed dtype (bf16: half the fp32 size);
Whether it runs is also a matter of speed: on the first call, the packed copy and the module are
timed on that call's shapes and the faster is kept, cached per CPU model, tower and dtype
(`siglip.inference_choice`); `SIGLIP_PACKED=0` in the environment turns packing off, `=1` forces it.
B/16 on 2 CPU cores, batch 8: 1.1-1.2x the module's speed in bf16 and 1.25-1.4x in fp32
(`benchmarks/throughput.py` compares it with transformers and open_clip).
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import Tensor, nn

from siglip import inference_choice
from siglip.model import MLP, Attention, MAPHead, SigLIP, l2_normalize
from siglip.naflex import NaFlexPatches

PACKABLE = (torch.float32, torch.bfloat16)
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tower -> (key, packed copy)


def _pack(weight: Tensor, bias: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    w = weight.detach().to(dtype).contiguous()
    return torch.ops.mkldnn._reorder_linear_weight(w), bias.detach().to(dtype).contiguous()


class PackedLinear(nn.Module):
    """y = act(x W^T + b) with W reordered for oneDNN; `act` is "none" or "gelu" (`algorithm`:
    "tanh" or "none", as F.gelu's `approximate`). x is cast to the packed dtype first, as autocast
    would."""

    def __init__(self, weight: Tensor, bias: Tensor, dtype: torch.dtype, act: str = "none", algorithm: str = ""):
        super().__init__()
        w, b = _pack(weight, bias, dtype)
        self.register_buffer("weight", w, persistent=False)
        self.register_buffer("bias", b, persistent=False)
        self.dtype, self.act, self.algorithm = dtype, act, algorithm

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            x.to(self.dtype), self.weight, self.bias, self.act, [], self.algorithm
        )


def _linear(layer: nn.Linear, dtype: torch.dtype, act: str = "none", algorithm: str = "") -> PackedLinear:
    return PackedLinear(layer.weight, layer.bias, dtype, act, algorithm)


def _concat(layers: tuple[nn.Linear, ...], dtype: torch.dtype) -> PackedLinear:
    return PackedLinear(torch.cat([m.weight for m in layers]), torch.cat([m.bias for m in layers]), dtype)


class PackedMLP(nn.Module):
    """fc2(gelu(fc1 x)) with the GELU fused into fc1 (eval mode: no dropout)."""

    def __init__(self, mlp: MLP, dtype: torch.dtype):
        super().__init__()
        self.fc1 = _linear(mlp.fc1, dtype, "gelu", mlp.approximate)
        self.fc2 = _linear(mlp.fc2, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x))


class PackedAttention(nn.Module):
    """`siglip.model.Attention` in eval mode with one product for q, k, v (self-attention) or for
    k, v (`cross`: the MAP head's probe attends over the tokens)."""

    def __init__(self, attn: Attention, dtype: torch.dtype, cross: bool):
        super().__init__()
        self.heads, self.cross = attn.heads, cross
        if cross:
            self.q, self.kv = _linear(attn.q, dtype), _concat((attn.k, attn.v), dtype)
        else:
            self.qkv = _concat((attn.q, attn.k, attn.v), dtype)
        self.out = _linear(attn.out, dtype)

    def _heads(self, y: Tensor, parts: int) -> tuple[Tensor, ...]:
        """(n, l, parts * d) -> `parts` tensors (n, heads, l, d / heads)."""
        return y.unflatten(-1, (parts, self.heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: Tensor, kv: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        n, lq, d = x.shape
        if self.cross:
            (q,), (k, v) = self._heads(self.q(x), 1), self._heads(self.kv(x if kv is None else kv), 2)
        else:
            q, k, v = self._heads(self.qkv(x), 3)
        bias = None if mask is None else mask[:, None, None, :]
        h = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out(h.transpose(1, 2).reshape(n, lq, d))


def packed_copy(tower: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `tower` (eval mode) with every Linear, MLP and Attention replaced by its packed
    form in `dtype`; the rest (embeddings, LayerNorms, the patch convolution) is shared, not copied."""
    memo = {id(p): p for p in tower.parameters()}  # deepcopy the module tree, not the weights
    memo.update({id(b): b for b in tower.buffers()})
    packed = copy.deepcopy(tower, memo).eval()
    for parent in list(packed.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MLP):
                setattr(parent, name, PackedMLP(child, dtype))
            elif isinstance(child, Attention):
                setattr(parent, name, PackedAttention(child, dtype, cross=isinstance(parent, MAPHead)))
            elif isinstance(child, nn.Linear):
                setattr(parent, name, _linear(child, dtype))
    return packed


def compute_dtype(tower: nn.Module) -> torch.dtype | None:
    """The dtype a packed copy of `tower` would compute in here, or None when the module itself
    should run (not on the CPU, fp16, sharded or inference-mode parameters, no oneDNN)."""
    params = list(tower.parameters())
    if inference_choice.forced() is False or not params or tower.training or not torch.backends.mkldnn.is_available():
        return None
    p = params[0]
    if p.device.type != "cpu" or type(p.data) is not torch.Tensor or p.is_inference():
        return None
    dtype = p.dtype
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
    if dtype not in PACKABLE or any(q.dtype != p.dtype for q in params):
        return None
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return dtype


def packed_tower(tower: nn.Module, inputs: tuple[Tensor | None, ...] = ()) -> nn.Module:
    """The packed copy of `tower` for the current dtype (made now or kept from an earlier call with
    the same weights), or `tower` itself where packing does not apply or the module is faster on
    this CPU (`siglip.inference_choice`, timed on `inputs` the first time)."""
    dtype = compute_dtype(tower)
    choice = None if dtype is None else inference_choice.decided(tower, dtype)
    if dtype is None or choice is False:
        return tower
    key = (dtype, tuple((p.data_ptr(), p._version) for p in tower.parameters()))
    hit = _PACKED.get(tower)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.inference_mode(False), torch.no_grad(), torch.autocast("cpu", enabled=False):
        packed = packed_copy(tower, dtype)
    if choice is None and not inference_choice.measure(tower, packed, dtype, inputs):
        return tower  # the module is faster here: the copy is dropped
    _PACKED[tower] = (key, packed)
    return packed


def _unwrap(model: nn.Module) -> nn.Module:
    """The `SigLIP` inside a `siglip.api.Model` (held as `.model`) or a DDP / compile wrapper (held
    as the submodule `module`); anything else as given. Embedding needs none of the wrappers' hooks."""
    inner = model
    for _ in range(4):
        if isinstance(inner, SigLIP):
            return inner
        nxt = inner.__dict__.get("model")
        if nxt is None and isinstance(inner, nn.Module):
            nxt = inner._modules.get("module")
        if nxt is None:
            break
        inner = nxt
    return model


def forget(model: nn.Module) -> None:
    """Drop the packed copies of `model`'s towers (the evaluations during training call this after
    each pass, so the copy does not stay in memory between evaluations)."""
    model = _unwrap(model)
    for tower in (getattr(model, "image", None), getattr(model, "text", None)):
        if tower is not None:
            _PACKED.pop(tower, None)


def needs_autograd(tower: nn.Module, *inputs: Tensor | None) -> bool:
    """Whether a call of `tower` on `inputs` could be asked for gradients: grad mode is on (not under
    `torch.no_grad()` / `torch.inference_mode()`) and a parameter of the tower or an input requires
    grad. The packed copy has no autograd graph, so it runs only where this is False; eval mode alone
    says nothing about it (linear probes, adapters and attributions train through eval-mode towers)."""
    if not torch.is_grad_enabled():
        return False
    return any(p.requires_grad for p in tower.parameters()) or any(x is not None and x.requires_grad for x in inputs)


def run_tower(tower: nn.Module, *inputs: Tensor | None) -> Tensor:
    """`tower(*inputs)`: through its packed copy where that applies and autograd cannot need the
    result, else the module itself, with autograd as it would run alone."""
    if needs_autograd(tower, *inputs):
        return tower(*inputs)
    fast = packed_tower(tower, inputs)
    if fast is tower:
        return tower(*inputs)
    with torch.no_grad():  # nothing requires grad here: no graph either way
        return fast(*inputs)


def encode_image(model: SigLIP, pixels, mask: Tensor | None = None, spatial_shapes: Tensor | None = None) -> Tensor:
    """`model.encode_image(...)`, through the packed image tower where it applies (`run_tower`)."""
    model = _unwrap(model)
    if not isinstance(model, SigLIP):  # something else with an encode_image: its own
        return model.encode_image(pixels, mask, spatial_shapes)
    if isinstance(pixels, NaFlexPatches):
        pixels, mask, spatial_shapes = pixels
    return l2_normalize(run_tower(model.image, pixels, mask, spatial_shapes))


def encode_text(model: SigLIP, ids: Tensor) -> Tensor:
    """`model.encode_text(ids)`, through the packed text tower where it applies (`run_tower`)."""
    model = _unwrap(model)
    if not isinstance(model, SigLIP):
        return model.encode_text(ids)
    return l2_normalize(run_tower(model.text, ids))
