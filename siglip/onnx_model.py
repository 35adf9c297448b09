"""An ONNX export (`siglip convert MODEL OUT --to onnx`) run with onnxruntime behind the `Model`
interface: `siglip.load(folder)` returns a `siglip.api.Model` whose module is `OnnxTowers`, so
`embed_images`, `embed_texts`, `score`, `classify` and the `siglip` commands (embed, search,
classify, score, serve) work on it unchanged.

It runs inference only: no gradient, no training, no intermediate features (each is an error that
says to load the torch model it came from). The weights' fingerprint (what an index records) is the
source model's for an fp32 export (the same weights, the same outputs to 1e-6), and a distinct one
for int8 and fp16 exports, whose embeddings differ.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from siglip.config import model_config_from_dict
from siglip.interop.onnx import SPEC_FILE, require
from siglip.naflex import NaFlexPatches
from siglip.tokenizer import Tokenizer
from siglip.transforms import checkpoint_transform


def is_onnx_export(path: str | Path) -> bool:
    """A folder that `siglip convert --to onnx` wrote (it holds siglip_onnx.json)."""
    return Path(path).is_dir() and (Path(path) / SPEC_FILE).is_file()


class InferenceOnly(RuntimeError):
    """What an ONNX export says when asked to train, backpropagate or give features."""


class OnnxTowers(nn.Module):
    """Stands where the `SigLIP` module stands in a `siglip.api.Model`: `encode_image`,
    `encode_text` (unit float32 rows, on the CPU), `t`, `b` and `config`, through two onnxruntime
    sessions. `spec` is the folder's siglip_onnx.json."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        super().__init__()
        ort = require("onnxruntime")
        self.folder = Path(folder)
        spec = json.loads((self.folder / SPEC_FILE).read_text())
        if spec.get("format") != "siglip-onnx":
            raise ValueError(f"{self.folder / SPEC_FILE}: not a siglip ONNX export (format {spec.get('format')!r})")
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") or device == "auto":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            elif device != "auto":
                raise ValueError(f"{self.folder}: device {device}, but this onnxruntime has no CUDA provider")
        self.image_session = ort.InferenceSession(str(self.folder / spec["image_model"]), providers=providers)
        self.text_session = ort.InferenceSession(str(self.folder / spec["text_model"]), providers=providers)
        self.spec, self.config = spec, model_config_from_dict(spec["model_config"])
        # device and dtype of the Model (inputs are made float32 on the host); no weights live here
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)
        self.register_buffer("t", torch.tensor(float(spec["t"])), persistent=False)
        self.register_buffer("b", torch.tensor(float(spec["b"])), persistent=False)

    def extra_repr(self) -> str:
        return f"{self.folder}, {self.spec['precision']}, {self.image_session.get_providers()[0]}"

    def _inference_only(self, what: str) -> InferenceOnly:
        return InferenceOnly(
            f"{self.folder}: an ONNX export runs inference only (onnxruntime): {what}; load the model it was "
            "exported from for that"
        )

    def train(self, mode: bool = True) -> OnnxTowers:
        if mode:
            raise self._inference_only("it cannot be trained")
        return super().train(False)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("image", "text"):  # Model.image_features, evaluation helpers
                raise AttributeError(
                    str(self._inference_only(f"it has no {name} tower module (no features)"))
                ) from None
            raise

    def _no_grad(self, *tensors: Tensor | None) -> None:
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            raise self._inference_only("it computes no gradients")

    def encode_image(self, pixels, mask: Tensor | None = None, spatial_shapes: Tensor | None = None) -> Tensor:
        """As `SigLIP.encode_image`, through image.onnx: (n, d) float32 unit rows on the CPU."""
        if isinstance(pixels, NaFlexPatches):
            pixels, mask, spatial_shapes = pixels
        self._no_grad(pixels)
        if self.config.naflex:
            feeds = {"patches": pixels.float(), "mask": mask.bool(), "spatial_shapes": spatial_shapes.long()}
        else:
            feeds = {"pixels": pixels.float()}
        feeds = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in feeds.items()}
        return torch.from_numpy(self.image_session.run(None, feeds)[0])

    def encode_text(self, ids: Tensor) -> Tensor:
        """As `SigLIP.encode_text`, through text.onnx: (n, d) float32 unit rows on the CPU."""
        out = self.text_session.run(None, {"ids": np.ascontiguousarray(ids.detach().cpu().numpy().astype(np.int64))})
        return torch.from_numpy(out[0])

    def forward(self, pixels, ids: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode_image(pixels), self.encode_text(ids)

    def tokenizer(self) -> Tokenizer:
        """The tokenizer written beside the graphs."""
        t = self.spec["text"]
        return Tokenizer((self.folder / t["file"]).read_bytes(), t["length"], t["kind"], t["format"], t["specials"])

    def preprocess(self):
        return checkpoint_transform(self.spec["preprocess"])

    def fingerprint(self) -> str:
        """The source model's for fp32; derived from it and the precision for int8 / fp16."""
        source = self.spec.get("source_fingerprint", "")
        if self.spec["precision"] == "fp32":
            return source
        return hashlib.sha256(f"{source}:{self.spec['precision']}".encode()).hexdigest()[:16]
