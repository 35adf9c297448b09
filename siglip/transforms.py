"""Image preprocessing: PIL image -> float tensor (3, S, S) in [-1, 1].

Evaluation (and the paper's training): convert to RGB, resize the WHOLE image to S x S (squash, no
crop), scale to [-1, 1] (mean 0.5, std 0.5). The seed's augmentations (random resized crop,
horizontal flip, colour jitter) are opt-in for training.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image
from torch import Tensor
from torchvision import transforms as T

RESAMPLE = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB image, as Hugging Face and open_clip make it (`convert("RGB")`): alpha dropped
    without compositing (transparent pixels keep their colour), palettes and CMYK mapped by PIL, and
    EXIF orientation NOT applied (big_vision and open_clip train on the stored pixels; see
    docs/reliability.md). One difference: 16-bit greyscale (modes I;16*, I) is scaled by 1/257, where
    PIL's convert clips at 255 and turns nearly every pixel white."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img).astype(np.float32).clip(0, 65535) / 257.0
        return Image.fromarray(a.round().astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def image_transform(
    image_size: int,
    resample: str = "bicubic",
    *,
    random_resized_crop: bool = False,
    crop_scale_min: float = 0.5,
    horizontal_flip: bool = False,
    color_jitter: float = 0.0,
) -> Callable[[Image.Image], Tensor]:
    """The preprocessing function. With every augmentation off this is the evaluation transform."""
    if resample not in RESAMPLE:
        raise ValueError(f"unknown resample {resample!r}: choose one of {sorted(RESAMPLE)}")
    mode = RESAMPLE[resample]
    steps: list = [to_rgb]
    if random_resized_crop:
        steps.append(T.RandomResizedCrop(image_size, scale=(crop_scale_min, 1.0), interpolation=mode, antialias=True))
    else:
        steps.append(T.Resize((image_size, image_size), interpolation=mode, antialias=True))
    if horizontal_flip:
        steps.append(T.RandomHorizontalFlip())
    if color_jitter > 0:
        steps.append(T.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    steps += [T.ToTensor(), T.Normalize(mean=[0.5] * 3, std=[0.5] * 3)]
    return T.Compose(steps)


def checkpoint_transform(preprocess: dict) -> Callable[[Image.Image], Tensor]:
    """A checkpoint's own evaluation preprocessing, from its payload's `preprocess` entry
    ({"image_size": S, "resample": "bicubic" | "bilinear" | "nearest"}): the one place where what a
    model file says becomes a transform (`siglip.load` and the `siglip` command use it)."""
    return image_transform(int(preprocess["image_size"]), preprocess.get("resample", "bicubic"))
