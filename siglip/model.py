"""SigLIP: two pre-LayerNorm transformer towers and the learnable temperature t = exp(t') and bias b.

Architecture only, as the released checkpoints are (big_vision / Hugging Face):
- image: Conv2d patches (kernel = stride = patch, border pixels that do not fill a patch are dropped),
  a learned position embedding per patch (no class token), encoder, LayerNorm, MAP head;
- text: token + position embeddings, encoder with no causal and no padding mask, LayerNorm, the LAST
  token, Linear head;
- both embeddings L2-normalised; logits = t * zimg @ ztxt.T + b (see `siglip.loss`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from siglip.config import ModelConfig, TowerConfig
from siglip.naflex import NaFlexPatches, resize_positions

LN_EPS = 1e-6


class Attention(nn.Module):
    """Multi-head attention with q/k/v/out projections (all with bias), stored separately as every
    checkpoint format names them. With `fused` (a speed switch, not architecture) the projections
    that read the same input run as one matrix product over their concatenated weights: q, k, v for
    self-attention, k, v for the MAP head's cross-attention. Same maths, same parameters. Off by
    default: on a 2-core CPU it measured 1.01x (fp32) and 0.92x (bf16) of the separate products for
    B/16 blocks at batch 8. `dropout` applies to the output in training mode (0 = none, the released
    models)."""

    def __init__(self, width: int, heads: int, fused: bool = False, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.fused = fused
        self.dropout = dropout
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def _project(self, x: Tensor, layers: tuple[nn.Linear, ...]) -> tuple[Tensor, ...]:
        """The outputs of `layers` on x, (n, heads, l, d/heads) each."""
        if self.fused and len(layers) > 1:
            w = torch.cat([m.weight for m in layers])  # (k * d, d)
            y = F.linear(x, w, torch.cat([m.bias for m in layers]))  # (n, l, k * d)
            return y.unflatten(-1, (len(layers), self.heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        return tuple(m(x).unflatten(-1, (self.heads, -1)).transpose(1, 2) for m in layers)

    def forward(self, x: Tensor, kv: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """x: (n, lq, d) queries; kv: (n, lk, d) keys/values (default x); mask: (n, lk) bool, False
        for keys no query may attend to (NaFlex padding), None = all. Returns (n, lq, d)."""
        n, lq, d = x.shape
        if kv is None:
            q, k, v = self._project(x, (self.q, self.k, self.v))
        else:
            (q,), (k, v) = self._project(x, (self.q,)), self._project(kv, (self.k, self.v))
        bias = None if mask is None else mask[:, None, None, :]  # (n, 1, 1, lk), broadcast over heads, queries
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (n, heads, lq, d/heads)
        return _dropout(self.out(h.transpose(1, 2).reshape(n, lq, d)), self.dropout, self.training)


def _dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """F.dropout, skipped entirely at p = 0 so that the default draws no random numbers."""
    return F.dropout(x, p, training) if p > 0 and training else x


def set_fused_qkv(model: nn.Module, fused: bool) -> None:
    """Switch every Attention of `model` to fused (one product) or separate q/k/v projections."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused = fused


class MLP(nn.Module):
    """fc1 -> GELU -> fc2; `dropout` after the GELU and after fc2 in training mode (0 = none)."""

    def __init__(self, width: int, hidden: int, gelu: str, dropout: float = 0.0):
        super().__init__()
        if gelu not in ("tanh", "exact"):
            raise ValueError(f"gelu must be 'tanh' or 'exact', got {gelu!r}")
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.approximate = "tanh" if gelu == "tanh" else "none"
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        h = _dropout(F.gelu(self.fc1(x), approximate=self.approximate), self.dropout, self.training)
        return _dropout(self.fc2(h), self.dropout, self.training)


class Block(nn.Module):
    """Pre-LN encoder block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: TowerConfig, gelu: str, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.attn = Attention(cfg.width, cfg.heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.mlp = MLP(cfg.width, cfg.mlp_dim, gelu, dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """`depth` blocks, then the final LayerNorm. With `checkpoint_blocks` (a training switch, not
    architecture) each block's activations are recomputed in the backward instead of kept."""

    def __init__(self, cfg: TowerConfig, gelu: str, dropout: float = 0.0):
        super().__init__()
        gelu = cfg.gelu or gelu  # the tower's own setting wins over the model-wide one
        self.blocks = nn.ModuleList([Block(cfg, gelu, dropout) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.checkpoint_blocks = False

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (n, l, d); mask: (n, l) bool, False = a padding token others do not attend to."""
        for block in self.blocks:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return self.norm(x)

    def hidden_states(self, x: Tensor, mask: Tensor | None = None, upto: int | None = None) -> list[Tensor]:
        """transformers' `hidden_states`: [x, after block 1, ..., after block `upto` (None: all)],
        each (n, l, d), none through the final LayerNorm (`self.norm` of the last is `forward`'s)."""
        out = [x]
        for block in self.blocks[: len(self.blocks) if upto is None else upto]:
            out.append(block(out[-1], mask))
        return out


class MAPHead(nn.Module):
    """Multi-head attention pooling: one learned probe attends over the tokens, then
    h = h + MLP(LN(h)). Returns the probe's token: (n, d)."""

    def __init__(self, cfg: TowerConfig, gelu: str):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.attn = Attention(cfg.width, cfg.heads)
        self.norm = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.mlp = MLP(cfg.width, cfg.mlp_dim, cfg.gelu or gelu)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (n, l, d) tokens; mask: (n, l) bool, False = padding the probe ignores."""
        h = self.attn(self.probe.expand(x.shape[0], -1, -1), kv=x, mask=mask)  # (n, 1, d)
        h = h + self.mlp(self.norm(h))
        return h[:, 0]


class ImageTower(nn.Module):
    """ViT without class token. pixels (n, 3, S, S) in [-1, 1] -> (n, width), not normalised.
    NaFlex (`cfg.naflex`): patches (n, P, p*p*3), mask (n, P), spatial_shapes (n, 2) instead."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w = cfg.image.width
        self.patch_size = cfg.patch_size
        self.grid = cfg.image_size // cfg.patch_size
        self.naflex = cfg.naflex
        if cfg.naflex:  # a Linear on flattened (row, column, channel) patches
            self.patch_embed = nn.Linear(3 * cfg.patch_size**2, w)
        else:
            self.patch_embed = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, w))
        self.encoder = Encoder(cfg.image, cfg.gelu, cfg.dropout)
        self.head = MAPHead(cfg.image, cfg.gelu)

    def embed(self, pixels: Tensor, mask: Tensor | None = None, spatial_shapes: Tensor | None = None) -> Tensor:
        """The encoder's input, patch embeddings + positions: (n, 3, S, S) -> (n, grid*grid, width).
        NaFlex: (n, P, p*p*3) patches with their mask and spatial shapes -> (n, P, width)."""
        if self.naflex:
            return self.embed_naflex(pixels, mask, spatial_shapes)
        if mask is not None or spatial_shapes is not None:
            raise ValueError("a patch mask / spatial shapes were given to a fixed-resolution image tower")
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # (n, patches, width)
        if x.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(
                f"image of {tuple(pixels.shape[-2:])} px gives {x.shape[1]} patches, the model has "
                f"{self.pos_embed.shape[1]} position embeddings ({self.grid}x{self.grid} of {self.patch_size} px)"
            )
        return x + self.pos_embed

    def embed_naflex(self, patches: Tensor, mask: Tensor | None, spatial_shapes: Tensor | None) -> Tensor:
        if patches.ndim != 3 or mask is None or spatial_shapes is None:
            raise ValueError(
                f"a NaFlex image tower takes patches (n, P, {self.patch_embed.in_features}) with their mask and "
                f"spatial shapes (siglip.transforms.naflex_transform), got a {tuple(patches.shape)} tensor"
            )
        pos = resize_positions(self.pos_embed[0], self.grid, spatial_shapes, patches.shape[1])  # (n, P, width)
        return self.patch_embed(patches) + pos

    def forward_features(
        self, pixels: Tensor, mask: Tensor | None = None, spatial_shapes: Tensor | None = None
    ) -> Tensor:
        """(n, 3, S, S) -> tokens (n, grid*grid, width) after the final LayerNorm. NaFlex: (n, P, p*p*3)
        patches with their mask and spatial shapes -> (n, P, width), padding tokens included."""
        x = self.embed(pixels, mask, spatial_shapes)
        return self.encoder(x, None if mask is None else mask.bool())

    def forward(self, pixels: Tensor, mask: Tensor | None = None, spatial_shapes: Tensor | None = None) -> Tensor:
        tokens = self.forward_features(pixels, mask, spatial_shapes)
        return self.head(tokens, None if mask is None else mask.bool())


class TextTower(nn.Module):
    """Token ids (n, L) -> (n, embed_dim), not normalised. No mask of any kind: the released
    models see EOS padding as ordinary tokens and pool the last position."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w = cfg.text.width
        self.token_embed = nn.Embedding(cfg.vocab_size, w)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.text_length, w))
        self.encoder = Encoder(cfg.text, cfg.gelu, cfg.dropout)
        self.head = nn.Linear(w, cfg.out_dim) if cfg.text_head else nn.Identity()

    def forward_features(self, ids: Tensor) -> Tensor:
        """(n, L) -> (n, L, width) after the final LayerNorm."""
        if ids.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f"text of {ids.shape[1]} tokens, the model takes exactly {self.pos_embed.shape[1]}")
        return self.encoder(self.token_embed(ids) + self.pos_embed)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.forward_features(ids)[:, -1])


def l2_normalize(x: Tensor) -> Tensor:
    """x / (||x|| + 1e-8), as big_vision does."""
    return x / (x.norm(dim=-1, keepdim=True) + 1e-8)


class SigLIP(nn.Module):
    """The two towers plus t' (`t_prime`, log-temperature) and b (`b`, bias).

    `forward(pixels, ids) -> (zimg, ztxt)`, both (n, out_dim) and L2-normalised; feed them with
    `model.t` and `model.b` to `siglip.loss.sigmoid_loss`.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.text_head is False and cfg.text.width != cfg.out_dim:
            raise ValueError("text_head=False needs text width == image embedding size")
        self.config = cfg
        self.image = ImageTower(cfg)
        self.text = TextTower(cfg)
        self.t_prime = nn.Parameter(torch.tensor(float(cfg.init_t_prime)))
        self.b = nn.Parameter(torch.tensor(float(cfg.init_b)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """big_vision-style init: xavier-uniform linears with zero bias, MLP biases N(0, 1e-6),
        lecun-normal patch kernel, position and token embeddings N(0, 1/sqrt(d))."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            if isinstance(m, MLP):
                nn.init.normal_(m.fc1.bias, std=1e-6)
                nn.init.normal_(m.fc2.bias, std=1e-6)
        pe = self.image.patch_embed
        fan_in = pe.weight[0].numel()  # 3 * p * p for the Conv2d and for the NaFlex Linear
        nn.init.trunc_normal_(pe.weight, std=1.0 / math.sqrt(fan_in))
        nn.init.zeros_(pe.bias)
        for p in (self.image.pos_embed, self.text.pos_embed):
            nn.init.normal_(p, std=1.0 / math.sqrt(p.shape[-1]))
        nn.init.normal_(self.text.token_embed.weight, std=1.0 / math.sqrt(self.text.token_embed.embedding_dim))
        nn.init.xavier_uniform_(self.image.head.probe.view(1, -1))

    @property
    def t(self) -> Tensor:
        """The temperature t = exp(t')."""
        return self.t_prime.exp()

    def encode_image(
        self, pixels: Tensor | NaFlexPatches, mask: Tensor | None = None, spatial_shapes: Tensor | None = None
    ) -> Tensor:
        """(n, 3, S, S) in [-1, 1] -> (n, out_dim), unit norm. NaFlex models: a `NaFlexPatches` batch,
        or its patches (n, P, p*p*3), mask (n, P) and spatial shapes (n, 2)."""
        if isinstance(pixels, NaFlexPatches):
            pixels, mask, spatial_shapes = pixels
        return l2_normalize(self.image(pixels, mask, spatial_shapes))

    def encode_text(self, ids: Tensor) -> Tensor:
        """(n, L) token ids -> (n, out_dim), unit norm."""
        return l2_normalize(self.text(ids))

    def forward(self, pixels: Tensor | NaFlexPatches, ids: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode_image(pixels), self.encode_text(ids)

    def logits(self, zimg: Tensor, ztxt: Tensor) -> Tensor:
        """(n_img, n_txt) = t * zimg @ ztxt.T + b; sigmoid of it is the pair probability."""
        return self.t * zimg @ ztxt.T + self.b


class _SkipInit(TorchFunctionMode):
    """Inside: torch.nn.init's functions return their tensor untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", "") == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def empty_model(cfg: ModelConfig) -> SigLIP:
    """`SigLIP(cfg)` on the meta device with no init run: shapes only, for weights assigned from a
    file (`load_state_dict(..., assign=True)`). An init on the meta device would run torch's Python
    reference of `normal_`, whose first call imports torch._dynamo (1-1.5 s of `siglip search`)."""
    with torch.device("meta"), _SkipInit():
        return SigLIP(cfg)
