"""What the evaluation readers return, and the small file helpers they share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from siglip.validation import EVAL_DATASETS

ZERO_SHOT_DATASETS = EVAL_DATASETS["zero_shot"]  # the names a config may use (siglip.config validates them)
RETRIEVAL_DATASETS = EVAL_DATASETS["retrieval"]


@dataclass
class ClassificationSet:
    """images: file paths, or (n, H, W, 3) uint8 pixels; labels[i] indexes classnames."""

    images: Sequence[str] | np.ndarray
    labels: list[int]
    classnames: list[str]
    templates: list[str]


@dataclass
class RetrievalSet:
    """Every caption of every image: texts[j] describes images[image_of_text[j]]."""

    images: list[str]
    texts: list[str]
    image_of_text: list[int]


def first_existing(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.exists()), None)


def looked_for(candidates: list[Path]) -> str:
    return ", ".join(str(p) for p in candidates)


def group_pairs(pairs: list[tuple[str, str]]) -> RetrievalSet:
    """(image, caption) pairs -> images in order of first appearance, each with all its captions."""
    index: dict[str, int] = {}
    texts, image_of_text = [], []
    for image, caption in pairs:
        texts.append(caption)
        image_of_text.append(index.setdefault(image, len(index)))
    return RetrievalSet(list(index), texts, image_of_text)


def image_folder(candidates: list[Path], first: str, what: str) -> Path:
    """The first candidate folder that holds `first` (the dataset's first image)."""
    d = next((c for c in candidates if (c / first).is_file()), None)
    if d is None:
        raise FileNotFoundError(f"{what}: cannot find the image {first} in {looked_for(candidates)}")
    return d


def load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
