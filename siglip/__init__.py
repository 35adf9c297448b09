"""SigLIP: sigmoid loss for language-image pre-training (Zhai et al., ICCV 2023).

import siglip
model = siglip.load("checkpoints/siglip_demo.pt")
zimg = model.encode_image(model.preprocess(pil_image)[None])   # (1, d), unit norm
ztxt = model.encode_text(model.tokenizer(["a handwritten seven"]))
prob = torch.sigmoid(model.t * zimg @ ztxt.T + model.b)
"""

from siglip.checkpoint import save_model
from siglip.config import Config, ModelConfig
from siglip.interop import load
from siglip.loss import sigmoid_loss, softmax_loss
from siglip.model import SigLIP
from siglip.tokenizer import Tokenizer

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
