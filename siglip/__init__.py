"""SigLIP: sigmoid loss for language-image pre-training (Zhai et al., ICCV 2023).

import siglip
model = siglip.load("checkpoints/siglip_demo.pt")              # siglip.api.Model
zimg = model.embed_images(["seven.png"])                        # (1, d) float32, unit norm
prob = model.score(["seven.png"], ["a handwritten seven"])      # (1, 1) sigmoid(t * cos + b)

The `siglip` command (`python -m siglip`, siglip/cli/) embeds folders, searches, classifies, scores.
"""

from siglip.api import Model, load
from siglip.checkpoint import save_model
from siglip.config import Config, ModelConfig
from siglip.loss import sigmoid_loss, softmax_loss
from siglip.model import SigLIP
from siglip.tokenizer import Tokenizer

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
