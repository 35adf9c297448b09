"""Zero-shot classification: class embeddings from prompt templates, image embeddings, metrics.

Method (CLIP / SigLIP): per class, embed every template filled with the class name, average the
normalised embeddings, renormalise; predict the argmax of image . class.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .data import IMAGE_EXTENSIONS, load_image
from .evaluate import zero_shot_metrics
from .model import SigLIP, l2_normalize
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)


def read_class_folder(root: str | Path) -> tuple[list[str], list[int], list[str]]:
    """A tree with one sub-folder per class: (image paths, labels, class names = sorted folder names)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"class folder dataset not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{root}: no class sub-folders")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for p in sorted((root / name).rglob("*")):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(str(p))
                labels.append(label)
    if not paths:
        raise FileNotFoundError(f"{root}: no images in the class folders {classes[:5]}...")
    return paths, labels, classes


class ImageListDataset(Dataset):
    """(pixels, index) per image path; pixels is None for an unreadable image (counted, not dropped)."""

    def __init__(self, paths: list[str], transform: Callable[[Image.Image], Tensor]):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.transform(load_image(self.paths[i])), i
        except Exception as e:  # noqa: BLE001
            log.warning("unreadable image %s: %s", self.paths[i], e)
            return None, i


def _collate(items):
    ok = [x for x in items if x[0] is not None]
    pixels = torch.stack([x[0] for x in ok]) if ok else None
    return pixels, torch.tensor([x[1] for x in ok], dtype=torch.long), [x[1] for x in items if x[0] is None]


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


@torch.inference_mode()
def class_embeddings(
    model: SigLIP, tokenizer: Tokenizer, classnames: list[str], templates: list[str], bf16: bool = False
) -> Tensor:
    """(c, d) unit vectors: per class the renormalised mean of its normalised template embeddings."""
    device = next(model.parameters()).device
    out = []
    for name in classnames:
        ids = tokenizer([t.format(name) for t in templates]).to(device)
        with _autocast(device, bf16):
            z = model.encode_text(ids).float()  # (templates, d), unit rows
        out.append(l2_normalize(z.mean(dim=0)))
    return torch.stack(out)


@torch.inference_mode()
def image_embeddings(
    model: SigLIP,
    paths: list[str],
    transform,
    batch_size: int = 256,
    num_workers: int = 2,
    bf16: bool = False,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """(n, d) unit vectors and an (n,) bool mask of images that could be read (others are zero rows)."""
    device = next(model.parameters()).device
    loader = DataLoader(
        ImageListDataset(paths, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    emb, ok = None, torch.zeros(len(paths), dtype=torch.bool)
    for pixels, index, _bad in tqdm(loader, desc="images", disable=not progress, leave=False):
        if pixels is None:
            continue
        with _autocast(device, bf16):
            z = model.encode_image(pixels.to(device)).float().cpu()
        if emb is None:
            emb = torch.zeros(len(paths), z.shape[1])
        emb[index] = z
        ok[index] = True
    if emb is None:
        raise ValueError(f"none of the {len(paths)} images could be read")
    return emb, ok


def zero_shot_scores(img: Tensor, ok: Tensor, cls: Tensor, labels: Tensor) -> Tensor:
    """(n, c) scores; an unreadable image gets its true class ranked last, so it counts as wrong."""
    scores = img @ cls.T
    bad = (~ok).nonzero().flatten()
    scores[bad] = 0.0
    scores[bad, labels[bad]] = -float("inf")
    return scores


def evaluate_zero_shot(
    model: SigLIP,
    tokenizer: Tokenizer,
    transform,
    paths: list[str],
    labels: list[int],
    classnames: list[str],
    templates: list[str],
    batch_size: int = 256,
    num_workers: int = 2,
    bf16: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """acc1, acc5, mean_per_class_recall and the count of unreadable images."""
    was_training = model.training
    model.eval()
    try:
        cls = class_embeddings(model, tokenizer, classnames, templates, bf16).cpu()
        img, ok = image_embeddings(model, paths, transform, batch_size, num_workers, bf16, progress)
    finally:
        model.train(was_training)
    y = torch.tensor(labels)
    metrics = zero_shot_metrics(zero_shot_scores(img, ok, cls, y), y)
    metrics["unreadable"] = int((~ok).sum())
    return metrics
