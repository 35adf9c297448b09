"""NaFlex (SigLIP 2, Hugging Face `Siglip2Model`): images at their own aspect ratio as padded patch
sequences.

Each image is resized (aspect ratio kept) to at most `max_num_patches` patches of p x p pixels
(`siglip.transforms.naflex_transform`), cut into its (h, w) grid of patches, each patch flattened as
(row, column, channel) into p*p*3 values, and the sequence padded with zeros to `max_num_patches`.
The model embeds the patches with a Linear map, adds the learned (g, g) position grid resized to
(h, w) (bilinear, antialiased, align_corners False), and masks the padding in every attention layer
and in the MAP head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class NaFlexPatches:
    """A NaFlex image batch: what `SigLIP.encode_image` takes in place of (n, 3, S, S) pixels.

    patches: (n, P, p*p*3) float in [-1, 1], each patch flattened (row, column, channel), zero padded;
    mask: (n, P) bool, True for the h*w real patches (they come first);
    spatial_shapes: (n, 2) long, each image's patch grid (h, w) with h*w <= P.
    Unbatched (one image: (P, p*p*3), (P,), (2,)) as a per-image transform returns it; `stack` batches.
    Iterates as (patches, mask, spatial_shapes); `.to`, `[i]`, `len` and `.shape` act on the batch."""

    patches: Tensor
    mask: Tensor
    spatial_shapes: Tensor

    def __iter__(self):
        return iter((self.patches, self.mask, self.spatial_shapes))

    def __len__(self) -> int:
        return self.patches.shape[0]

    def __getitem__(self, index) -> NaFlexPatches:
        return NaFlexPatches(self.patches[index], self.mask[index], self.spatial_shapes[index])

    @property
    def shape(self) -> torch.Size:
        return self.patches.shape

    def to(self, device=None, dtype: torch.dtype | None = None, non_blocking: bool = False) -> NaFlexPatches:
        """Moved to `device`; `dtype` applies to the patches only (the mask and shapes stay bool/long)."""
        move = lambda t: t.to(device, non_blocking=non_blocking)
        patches = self.patches.to(device, dtype, non_blocking=non_blocking)
        return NaFlexPatches(patches, move(self.mask), move(self.spatial_shapes))

    def pin_memory(self) -> NaFlexPatches:  # DataLoader(pin_memory=True) calls this
        return NaFlexPatches(*(t.pin_memory() for t in self))

    def split(self, size: int) -> list[NaFlexPatches]:
        """Micro-batches of `size` images, as `Tensor.split` (siglip.accumulate)."""
        return [self[i : i + size] for i in range(0, len(self), size)]

    @staticmethod
    def stack(items: list[NaFlexPatches]) -> NaFlexPatches:
        """Unbatched items (all with the same P) -> one batch."""
        return NaFlexPatches(*(torch.stack(parts) for parts in zip(*items)))


def patchify(image: Tensor, patch: int) -> Tensor:
    """(3, h*p, w*p) -> (h*w, p*p*3): patches in row-major order, each flattened (row, column, channel)."""
    c, height, width = image.shape
    x = image.reshape(c, height // patch, patch, width // patch, patch)  # (c, h, p, w, p)
    return x.permute(1, 3, 2, 4, 0).reshape((height // patch) * (width // patch), patch * patch * c)


def unpatchify_weight(weight: Tensor, channels: int = 3) -> Tensor:
    """NaFlex patch-embedding weight (d, p*p*c) -> the equivalent Conv2d kernel (d, c, p, p)."""
    d, n = weight.shape
    p = round((n // channels) ** 0.5)
    return weight.reshape(d, p, p, channels).permute(0, 3, 1, 2)


def resize_positions(pos: Tensor, grid: int, spatial_shapes: Tensor, length: int) -> Tensor:
    """The (grid*grid, d) learned positions resized to each image's patch grid and padded.

    pos: (grid*grid, d), row-major; spatial_shapes: (n, 2) (h, w) per image. Returns (n, length, d):
    image i's h*w positions first (bilinear, antialiased when shrinking, align_corners False), zeros
    after (those tokens are masked). One interpolation per distinct shape in the batch."""
    n, d = spatial_shapes.shape[0], pos.shape[-1]
    if (spatial_shapes.prod(-1) > length).any() or (spatial_shapes < 1).any():
        raise ValueError(f"spatial shapes {spatial_shapes.tolist()} do not fit {length} patches")
    out = pos.new_zeros(n, length, d)
    img = pos.reshape(1, grid, grid, d).permute(0, 3, 1, 2).float()  # (1, d, g, g)
    for h, w in torch.unique(spatial_shapes, dim=0).tolist():
        resized = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        rows = (spatial_shapes == spatial_shapes.new_tensor([h, w])).all(-1)
        out[rows, : h * w] = resized.reshape(d, h * w).T.to(pos.dtype)
    return out


def stack_images(items: list[Tensor | NaFlexPatches]) -> Tensor | NaFlexPatches:
    """Per-image preprocessing outputs -> one batch: (n, 3, S, S) pixels or a `NaFlexPatches` batch."""
    if items and isinstance(items[0], NaFlexPatches):
        return NaFlexPatches.stack(items)
    return torch.stack(items)
