"""Image preprocessing: PIL image -> float tensor (3, S, S) in [-1, 1].

Evaluation (and the paper's training): convert to RGB, resize the WHOLE image to S x S (squash, no
crop), scale to [-1, 1] (mean 0.5, std 0.5). The seed's augmentations (random resized crop,
horizontal flip, colour jitter) are opt-in for training.

NaFlex (SigLIP 2 `Siglip2Model`): `naflex_transform` keeps each image's aspect ratio and returns a
padded patch sequence with its mask and patch grid, as Hugging Face's Siglip2ImageProcessor does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from siglip.config import ModelConfig
from siglip.naflex import NaFlexPatches, patchify

# torchvision (about 1.3 s to import: it pulls in torch._dynamo) is imported when a transform is built
# or first called, not with this module, so `siglip search "text"` and `siglip --help` never load it
RESAMPLE = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST"}  # -> T.InterpolationMode


def _interpolation(resample: str):
    from torchvision.transforms import InterpolationMode

    return getattr(InterpolationMode, RESAMPLE[resample])


class Deferred:
    """`build(*args)`, made at the first call or attribute access (the torchvision import with it)
    and kept: a model's transform costs nothing to load where no image is read. Picklable, for
    DataLoader workers."""

    def __init__(self, build: Callable, *args):
        self.build, self.args, self.fn = build, args, None

    def __call__(self, img: Image.Image):
        return ready(self)(img)

    def __getattr__(self, name: str):  # the built transform's attributes (`.transforms` of a Compose)
        if name.startswith("__") or name in ("build", "args", "fn"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(ready(self), name)

    def __repr__(self) -> str:
        return f"Deferred({self.build.__name__}{self.args})"


def ready(transform: Callable) -> Callable:
    """`transform`, built now if it is `Deferred`: before DataLoader workers fork, so that they
    inherit torchvision rather than each importing it."""
    if isinstance(transform, Deferred):
        if transform.fn is None:
            transform.fn = transform.build(*transform.args)
        return transform.fn
    return transform


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
    from torchvision import transforms as T

    mode = _interpolation(resample)
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


def draft_size(image_size: int, random_resized_crop: bool = False, crop_scale_min: float = 1.0) -> int:
    """The smallest image side the training transform needs not to upsample: `image_size` for a
    whole-image resize; for random crops (area >= crop_scale_min, aspect 3/4-4/3, so a side down to
    sqrt(crop_scale_min * 3/4) of the image's) image_size / sqrt(crop_scale_min * 3/4). JPEGs are
    decoded at reduced scale down to this (`siglip.data.load_image`)."""
    if not random_resized_crop:
        return image_size
    return math.ceil(image_size / math.sqrt(crop_scale_min * 3 / 4))


# --------------------------------------------------------------------------------------------------
# NaFlex (SigLIP 2 Siglip2Model): each image at its own aspect ratio, as a padded patch sequence


def naflex_size(height: int, width: int, patch: int, max_num_patches: int) -> tuple[int, int]:
    """The size Hugging Face's Siglip2ImageProcessor resizes an image to: both sides multiples of
    `patch` (rounded up, at least one patch), aspect ratio kept, at most `max_num_patches` patches,
    as large as possible. Found as the processor finds it: bisection on the scale (1e-6 .. 100, to
    1e-5), so edge cases round the same way."""

    def sides(scale: float) -> tuple[int, int]:
        snap = lambda s: max(patch, math.ceil(s * scale / patch) * patch)
        return snap(height), snap(width)

    lo, hi = 1e-6, 100.0
    while hi - lo >= 1e-5:
        mid = (lo + hi) / 2
        h, w = sides(mid)
        if (h // patch) * (w // patch) <= max_num_patches:
            lo = mid
        else:
            hi = mid
    return sides(lo)


def naflex_transform(
    patch_size: int, max_num_patches: int, resample: str = "bilinear"
) -> Callable[[Image.Image], NaFlexPatches]:
    """PIL image -> one unbatched `NaFlexPatches`: patches (max_num_patches, p*p*3) in [-1, 1], mask
    (max_num_patches,), spatial shape (2,). Convert to RGB, resize the uint8 image to `naflex_size`
    (antialiased; bilinear as the SigLIP 2 processor), scale to [-1, 1], cut into patches, pad with
    zeros. Batch with `NaFlexPatches.stack` or call `naflex_preprocess` on a list."""
    if resample not in RESAMPLE:
        raise ValueError(f"unknown resample {resample!r}: choose one of {sorted(RESAMPLE)}")
    if max_num_patches < 1:
        raise ValueError(f"max_num_patches must be >= 1, got {max_num_patches}")

    def transform(img: Image.Image) -> NaFlexPatches:
        from torchvision.transforms.v2 import functional as TF  # v2: uint8 resizing as the SigLIP 2 processor

        x = TF.pil_to_tensor(to_rgb(img))  # (3, H, W) uint8
        h, w = naflex_size(x.shape[1], x.shape[2], patch_size, max_num_patches)
        x = TF.resize(x, [h, w], interpolation=_interpolation(resample), antialias=True)
        x = (x.float() - 127.5) / 127.5  # = (x / 255 - 0.5) / 0.5
        patches = patchify(x, patch_size)  # (h*w / p^2, p*p*3)
        n = patches.shape[0]
        mask = torch.arange(max_num_patches) < n
        patches = torch.cat([patches, patches.new_zeros(max_num_patches - n, patches.shape[1])])
        return NaFlexPatches(patches, mask, torch.tensor([h // patch_size, w // patch_size]))

    return transform


def naflex_preprocess(
    images: list[Image.Image], patch_size: int, max_num_patches: int, resample: str = "bilinear"
) -> NaFlexPatches:
    """A list of PIL images of any sizes -> a batch (n, max_num_patches, ...) for `encode_image`."""
    transform = naflex_transform(patch_size, max_num_patches, resample)
    return NaFlexPatches.stack([transform(img) for img in images])


def checkpoint_transform(preprocess: dict) -> Callable[[Image.Image], Tensor | NaFlexPatches]:
    """A checkpoint's own evaluation preprocessing, from its payload's `preprocess` entry
    ({"image_size": S, "resample": "bicubic" | "bilinear" | "nearest"}, plus "patch_size" and
    "max_num_patches" for a NaFlex model): the one place where what a model file says becomes a
    transform (`siglip.load` and the `siglip` command use it). NaFlex items are `NaFlexPatches`:
    batch them with `siglip.naflex.stack_images`. The square transform is `Deferred`: built (and
    torchvision imported) at its first image."""
    if preprocess.get("max_num_patches"):
        patch = int(preprocess["patch_size"])
        return naflex_transform(patch, int(preprocess["max_num_patches"]), preprocess.get("resample", "bilinear"))
    resample = preprocess.get("resample", "bicubic")
    if resample not in RESAMPLE:  # the error now, when the model loads, not at its first image
        raise ValueError(f"unknown resample {resample!r}: choose one of {sorted(RESAMPLE)}")
    return Deferred(image_transform, int(preprocess["image_size"]), resample)


def model_transform(cfg: ModelConfig, preprocess: dict, **augment) -> Callable[[Image.Image], Tensor | NaFlexPatches]:
    """The per-image preprocessing a model takes, from its config and a model file's `preprocess`
    entry ({"image_size", "resample", "max_num_patches"}): `image_transform` (with the training
    `augment` keywords) or, for a NaFlex model, `naflex_transform` (max_num_patches 0 = 256, the
    SigLIP 2 processor's default). Batch the outputs with `siglip.naflex.stack_images`."""
    if int(preprocess.get("max_num_patches") or 0) < 0:
        raise ValueError(f"data.max_num_patches={preprocess['max_num_patches']}: must be >= 0 (0 = 256 for NaFlex)")
    if not cfg.naflex:
        return image_transform(int(preprocess.get("image_size") or cfg.image_size), preprocess["resample"], **augment)
    on = sorted(k for k, v in augment.items() if v and k != "crop_scale_min")
    if on:
        raise ValueError(f"data.{on[0]}: augmentations are not supported with NaFlex models yet (set them off)")
    return naflex_transform(cfg.patch_size, int(preprocess.get("max_num_patches") or 256), preprocess["resample"])
