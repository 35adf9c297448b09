"""Batched embedding of an evaluation set's images and texts, under inference mode.

Images are decoded and resized in DataLoader workers. An image that cannot be read gets a zero row
and `False` in the returned mask: the metrics count it as a miss (see siglip.eval.metrics), never drop it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from siglip import inference
from siglip.data.manifests import load_image
from siglip.data.tables import TableRow
from siglip.model import SigLIP
from siglip.naflex import stack_images
from siglip.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# An evaluation set's images: file paths, or decoded pixels (n, H, W, 3) uint8 (CIFAR's pickles).
Images = Sequence[str] | np.ndarray


class ImageDataset(Dataset):
    """(pixels (3, S, S), index) per image; pixels is None for an unreadable image."""

    def __init__(self, images: Images, transform: Callable[[Image.Image], Tensor]):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor | None, int]:
        item = self.images[i]
        try:
            if isinstance(item, np.ndarray):
                img = Image.fromarray(item)
            elif isinstance(item, TableRow):  # a parquet/Arrow row ('FILE::ROW')
                img = load_image(item.open())
            else:  # a path, or an image inside a tar shard (siglip.eval.wds.TarImage) that opens itself
                img = item.open() if hasattr(item, "open") else load_image(item)
            return self.transform(img), i
        except Exception as e:  # noqa: BLE001 - any decode failure: report and count
            log.warning("unreadable image %s: %s", item if isinstance(item, str) else f"#{i}", e)
            return None, i


def _collate(items: list[tuple[Tensor | None, int]]) -> tuple[Tensor | None, Tensor]:
    ok = [x for x in items if x[0] is not None]
    pixels = stack_images([x[0] for x in ok]) if ok else None  # (n, 3, S, S) or NaFlexPatches
    return pixels, torch.tensor([x[1] for x in ok], dtype=torch.long)


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


@torch.inference_mode()
def embed_images(
    model: SigLIP,
    images: Images,
    transform: Callable[[Image.Image], Tensor],
    batch_size: int = 256,
    num_workers: int = 2,
    bf16: bool = False,
    progress: bool = False,
    encode: Callable[[SigLIP, Tensor], Tensor] | None = None,
    dim: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(n, d) float32 unit rows on the CPU, and an (n,) bool mask of the images that could be read
    (the others are zero rows). The model should be in eval mode. `encode(model, pixels)` and its
    width `dim` replace the embedding (default: `encode_image`, `out_dim`), e.g. with the MAP head's
    output for a linear probe."""
    encode = encode or inference.encode_image
    device = next(model.parameters()).device
    loader = DataLoader(
        ImageDataset(images, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    emb = torch.zeros(len(images), dim or model.config.out_dim)
    ok = torch.zeros(len(images), dtype=torch.bool)
    for pixels, index in tqdm(loader, desc="images", unit="batch", disable=not progress, leave=False):
        if pixels is None:
            continue
        with autocast(device, bf16):
            z = encode(model, pixels.to(device, non_blocking=True))
        emb[index] = z.float().cpu()
        ok[index] = True
    inference.forget(model)  # the packed copy (siglip.inference) is for this pass only
    bad = int((~ok).sum())
    if bad:
        log.warning("%d of %d images could not be read: each counts as a miss", bad, len(images))
    if not ok.any():
        raise ValueError(f"none of the {len(images)} images could be read")
    return emb, ok


@torch.inference_mode()
def embed_texts(
    model: SigLIP,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    batch_size: int = 256,
    bf16: bool = False,
    progress: bool = False,
) -> Tensor:
    """(n, d) float32 unit rows on the CPU."""
    device = next(model.parameters()).device
    out = []
    starts = range(0, len(texts), batch_size)
    for s in tqdm(starts, desc="texts", unit="batch", disable=not progress, leave=False):
        ids = tokenizer(list(texts[s : s + batch_size])).to(device)
        with autocast(device, bf16):
            out.append(inference.encode_text(model, ids).float().cpu())
    inference.forget(model)
    return torch.cat(out) if out else torch.zeros(0, model.config.out_dim)
