"""SigLIP: sigmoid loss for language-image pre-training (Zhai et al., ICCV 2023).

import siglip
model = siglip.load("checkpoints/siglip_demo.pt")              # siglip.api.Model
zimg = model.embed_images(["seven.png"])                        # (1, d) float32, unit norm
prob = model.score(["seven.png"], ["a handwritten seven"])      # (1, 1) sigmoid(t * cos + b)

The `siglip` command (`python -m siglip`, siglip/cli/) embeds folders, searches, classifies, scores.
"""

from .api import Model, load
from .checkpoint import save_model
from .config import Config, ModelConfig
from .loss import sigmoid_loss, softmax_loss
from .model import SigLIP
from .tokenizer import Tokenizer

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
