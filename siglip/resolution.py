"""A fixed-resolution model at another image size: its (g, g) grid of learned position embeddings
resized to (G, G), G = image_size / patch, once, when the weights are read (never in `forward`).

The two references resample differently, so each use follows its own:
- "transformers" (`siglip.load(path, image_size=384)`, inference): what transformers'
  `SiglipVisionEmbeddings.interpolate_pos_encoding` does when a checkpoint is run on larger images
  (`interpolate_pos_encoding=True`): bicubic (a = -0.75), align_corners False, no antialias. A model
  loaded this way gives transformers' embeddings on the same pixels (tests/test_resolution.py).
- "big_vision" (fine-tuning: `--config.model.image_size=384` or `train.finetune_image_size`): what
  big_vision's `resample_posemb` does when it loads a checkpoint for high-resolution fine-tuning,
  `scipy.ndimage.zoom(grid, G / g, order=1)`: linear, corner-aligned (the corner embeddings stay the
  corners: align_corners True), no antialias. The paper's 256/384/512 models were fine-tuned from
  this start.
NaFlex models resize their grid per image in `forward` (`siglip.naflex.resize_positions`) and need
neither.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor

from siglip.checkpoint import Payload

# method -> (F.interpolate mode, align_corners)
METHODS = {"transformers": ("bicubic", False), "big_vision": ("bilinear", True)}


def resize_pos_embed(pos: Tensor, grid: int, method: str = "big_vision") -> Tensor:
    """(1, g*g, d) position embeddings (row-major grid) -> (1, grid*grid, d), resampled by `method`
    ("transformers" or "big_vision", see the module docstring); computed in float32."""
    if method not in METHODS:
        raise ValueError(f"unknown resize method {method!r}: one of {sorted(METHODS)}")
    n, d = pos.shape[1], pos.shape[2]
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"{n} position embeddings are not a square grid")
    if g == grid:
        return pos
    mode, corners = METHODS[method]
    img = pos.reshape(1, g, g, d).permute(0, 3, 1, 2).float()  # (1, d, g, g)
    img = F.interpolate(img, size=(grid, grid), mode=mode, align_corners=corners)
    return img.permute(0, 2, 3, 1).reshape(1, grid * grid, d).to(pos.dtype)


def at_image_size(payload: Payload, image_size: int, method: str, where: str | Path) -> Payload:
    """`payload` (changed in place and returned) for images of `image_size` px: the position grid
    resized by `method`, and the model config and preprocessing recording the new size (a model
    saved from it is a model of that size). A NaFlex model is an error that says why."""
    cfg = payload["model_config"]
    if image_size and cfg.get("naflex"):
        raise ValueError(
            f"{where}: a NaFlex model takes images at their own size and aspect ratio and resizes its position "
            "grid per image: no image_size to set (choose the sequence length: max_num_patches)"
        )
    if not image_size or image_size == cfg["image_size"] or "image.pos_embed" not in payload["state_dict"]:
        return payload
    patch = cfg["patch_size"]
    if image_size % patch:
        raise ValueError(f"{where}: image size {image_size} is not a multiple of the patch size {patch}")
    sd = payload["state_dict"]
    sd["image.pos_embed"] = resize_pos_embed(sd["image.pos_embed"], image_size // patch, method)
    cfg["image_size"] = payload["preprocess"]["image_size"] = image_size
    return payload
