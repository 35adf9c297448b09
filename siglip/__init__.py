"""SigLIP: sigmoid loss for language-image pre-training (Zhai et al., ICCV 2023).

import siglip
model = siglip.load("checkpoints/siglip_demo.pt")              # siglip.api.Model
zimg = model.embed_images(["seven.png"])                        # (1, d) float32, unit norm
prob = model.score(["seven.png"], ["a handwritten seven"])      # (1, 1) sigmoid(t * cos + b)

The `siglip` command (`python -m siglip`, siglip/cli/) embeds folders, searches, classifies, scores.

The names below are imported at their first use (PEP 562), not with `import siglip`: the command
line imports only what a subcommand needs (`siglip --help` no torch at all, `siglip search "text"` no
torchvision), and `tests/test_startup.py` keeps it so.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# name -> the module that defines it
_WHERE = {
    "load": "siglip.api",
    "Model": "siglip.api",
    "save_model": "siglip.checkpoint",
    "Config": "siglip.config",
    "ModelConfig": "siglip.config",
    "sigmoid_loss": "siglip.loss",
    "softmax_loss": "siglip.loss",
    "SigLIP": "siglip.model",
    "Tokenizer": "siglip.tokenizer",
}

__all__ = [
    "load",
    "Model",
    "save_model",
    "Config",
    "ModelConfig",
    "SigLIP",
    "Tokenizer",
    "sigmoid_loss",
    "softmax_loss",
]

if TYPE_CHECKING:
    from siglip.api import Model, load
    from siglip.checkpoint import save_model
    from siglip.config import Config, ModelConfig
    from siglip.loss import sigmoid_loss, softmax_loss
    from siglip.model import SigLIP
    from siglip.tokenizer import Tokenizer


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'siglip' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
