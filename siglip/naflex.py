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
        """Patches and mask moved to `device`; `dtype` applies to the patches only (the mask stays
        bool). The spatial shapes stay where they are (the host, as made): they set the sizes of the
        position-grid resizes, which are read on the host, so on a GPU they would make it wait."""
        patches = self.patches.to(device, dtype, non_blocking=non_blocking)
        return NaFlexPatches(patches, self.mask.to(device, non_blocking=non_blocking), self.spatial_shapes)

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
    # read once as a list: free where the shapes live on the host (NaFlexPatches.to keeps them
    # there); shapes on a GPU make it wait here, as any shape-dependent resize must
    shapes = [(h, w) for h, w in spatial_shapes.tolist()]
    if any(h * w > length or min(h, w) < 1 for h, w in shapes):
        raise ValueError(f"spatial shapes {[list(s) for s in shapes]} do not fit {length} patches")
    rows_of: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(shapes):
        rows_of.setdefault(shape, []).append(i)
    out = pos.new_zeros(n, length, d)
    img = pos.reshape(1, grid, grid, d).permute(0, 3, 1, 2).float()  # (1, d, g, g)
    for (h, w), rows in sorted(rows_of.items()):
        resized = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        index = torch.tensor(rows).to(pos.device, non_blocking=True)  # the images of this shape
        out[index, : h * w] = resized.reshape(d, h * w).T.to(pos.dtype)
    return out


def stack_images(items: list[Tensor | NaFlexPatches]) -> Tensor | NaFlexPatches:
    """Per-image preprocessing outputs -> one batch: (n, 3, S, S) pixels or a `NaFlexPatches` batch."""
    if items and isinstance(items[0], NaFlexPatches):
        return NaFlexPatches.stack(items)
    return torch.stack(items)
