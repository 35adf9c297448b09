"""Shared fixtures: tiny models, a tokenizer trained on a few captions, image files on disk."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]

CAPTIONS = [
    "a red square on white",
    "a blue circle in the dark",
    "two green triangles",
    "a photo of a cat",
    "a dog running on grass",
    "handwritten number seven",
]


@pytest.fixture(scope="session")
def tokenizer():
    from siglip.tokenizer import Tokenizer

    return Tokenizer.train(CAPTIONS * 4, vocab_size=64, length=8)


@pytest.fixture
def tiny_config():
    from siglip.config import ModelConfig

    return ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=64)


def write_image(path: Path, color=(200, 30, 30), size=(20, 14)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    """A tar (a WebDataset shard) holding `members` (name -> bytes) as regular files, in that order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
