"""Image preprocessing: PIL image -> float tensor (3, S, S) in [-1, 1].

Evaluation (and the paper's training): convert to RGB, resize the WHOLE image to S x S (squash, no
crop), scale to [-1, 1] (mean 0.5, std 0.5). The seed's augmentations (random resized crop,
horizontal flip, colour jitter) are opt-in for training.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image
from torch import Tensor
from torchvision import transforms as T

RESAMPLE = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


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
    steps: list = [_rgb]
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
