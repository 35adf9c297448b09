"""Key rules: how one checkpoint format's tensors map onto our parameter names, as data.

A rule maps one source tensor to one or more of ours (`kind`):
    copy   reshape to our shape (also (N, D) <-> (1, N, D) position embeddings, (1,) <-> () scalars)
    split  rows [q; k; v] (or [k; v]) of a fused projection -> our separate tensors
    dense  big_vision kernel [in, out] (q/k/v: (D, heads, head_dim); out: (heads, head_dim, D)) -> weight (out, in)
    conv   big_vision patch kernel HWIO -> OIHW
`apply_rules` reads a format with them; `unapply_rules` writes it with the SAME rules, so import and
export cannot drift apart. Every tensor must be consumed by a rule, or the conversion fails naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Rule:
    ours: tuple[str, ...]
    theirs: str
    kind: str = "copy"


def torch_modules(ours: str, theirs: str, table: dict) -> list[Rule]:
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


def unapply_rules(
    rules: list[Rule],
    ours: dict[str, Tensor],
    their_shape: Callable[[Rule, Tensor], tuple[int, ...] | None] | None = None,
) -> dict[str, Tensor]:
    """Our state dict -> the format's tensors: the inverse of `apply_rules` for the same rules.
    `their_shape(rule, tensor)` gives the format's shape where a plain inverse is not enough (a
    position embedding stored (N, D), a scalar stored (1,), a kernel stored (D, heads, head_dim))."""
    ours = dict(ours)
    out: dict[str, Tensor] = {}
    for rule in rules:
        missing = [o for o in rule.ours if o not in ours]
        if missing:
            raise KeyError(f"missing tensor {missing[0]!r} (needed for {rule.theirs!r})")
        x = [ours.pop(o).float() for o in rule.ours]
        if rule.kind == "split":
            y = torch.cat(x, 0)
        elif rule.kind == "dense":
            y = x[0].T if x[0].ndim == 2 else x[0]
        elif rule.kind == "conv":
            y = x[0].permute(2, 3, 1, 0)
        else:
            y = x[0]
        shape = their_shape(rule, y) if their_shape else None
        out[rule.theirs] = (y.reshape(shape) if shape is not None else y).contiguous()
    if ours:
        raise KeyError(f"{len(ours)} tensors with no name in this format: {sorted(ours)[:8]}")
    return out
