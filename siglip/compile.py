"""`torch.compile` as a training switch (`train.compile`), with a fallback to eager execution.

Compiling fuses the elementwise work around the matrix products (LayerNorm, GELU, residual adds,
bf16 casts) into a few kernels. It needs a working backend: Triton on a GPU, a C++ compiler on a CPU.
`compile_or_eager` checks that up front, and a compiler failure at the first call (an unsupported
op, a broken toolchain) logs a warning and falls back to the eager module for the rest of the run.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil

import torch
from torch import nn

log = logging.getLogger(__name__)


def compile_unavailable(device: torch.device) -> str:
    """Why torch.compile cannot work here ("" when it can)."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "the GPU backend needs triton, which is not installed"
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "the CPU backend needs a C++ compiler (g++ or clang++) on PATH"
    return ""


class CompiledOrEager(nn.Module):
    """Calls the compiled `module`; if compiling fails, warns once and calls `module` itself.

    Parameters, buffers and `state_dict` are those of `module` (held as `.module`)."""

    def __init__(self, module: nn.Module, **compile_kwargs):
        super().__init__()
        self.module = module
        # kept out of nn.Module's registry, so that there is one state_dict, `module`'s
        self.__dict__["compiled"] = torch.compile(module, **compile_kwargs)

    def forward(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # dynamo/inductor raise many types; any failure here means no compile
                log.warning("torch.compile failed (%s: %s); running eagerly", type(e).__name__, str(e)[:300])
                self.compiled = None
        return self.module(*args, **kwargs)


def compile_or_eager(module: nn.Module, enabled: bool, device: torch.device) -> nn.Module:
    """`module` compiled when `enabled` and possible here, else `module` unchanged (with a warning
    saying why when compiling was asked for)."""
    if not enabled:
        return module
    why = compile_unavailable(device)
    if why:
        log.warning("train.compile: %s; running eagerly", why)
        return module
    return CompiledOrEager(module)


def eager_module(forward: nn.Module) -> nn.Module:
    """The module a CompiledOrEager wraps (e.g. the DDP wrapper whose no_sync is needed), else `forward`."""
    return forward.module if isinstance(forward, CompiledOrEager) else forward
