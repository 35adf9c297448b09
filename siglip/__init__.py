"""SigLIP: sigmoid loss for language-image pre-training (Zhai et al., ICCV 2023).

import siglip
model = siglip.load("checkpoints/siglip_demo.pt")
zimg = model.encode_image(model.preprocess(pil_image)[None])   # (1, d), unit norm
ztxt = model.encode_text(model.tokenizer(["a handwritten seven"]))
prob = torch.sigmoid(model.t * zimg @ ztxt.T + model.b)
"""

from .checkpoint import load, save_model
from .config import Config, ModelConfig
from .loss import sigmoid_loss, softmax_loss
from .model import SigLIP
from .tokenizer import Tokenizer

__all__ = [
    "load",
    "save_model",
    "Config",
    "ModelConfig",
    "SigLIP",
    "Tokenizer",
    "sigmoid_loss",
    "softmax_loss",
]
