"""Class names and prompt templates for zero-shot classification (data, not code).

A template holds one `{}` that is filled with a class name. The standard lists ship as text files
in siglip/assets/, one entry per line:
    imagenet_templates.txt   CLIP's 80 ImageNet prompt templates
    cifar_templates.txt      CLIP's 18 CIFAR-10/100 templates
    imagenet_classnames.txt  CLIP's 1000 ImageNet-1k class names, in sorted-synset order
    imagenet_synsets.txt     the 1000 ImageNet-1k WordNet ids (n01440764, ...), sorted
    cifar10_classnames.txt, cifar100_classnames.txt   in label order (CIFAR-100: '_' -> ' ')
A user's own lists (`--templates FILE`, `--classnames FILE`) use the same one-per-line format.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

# The bundled demo data: scikit-learn's handwritten digits.
from siglip.data.digits import DIGITS_CLASSNAMES  # noqa: F401  (re-exported: the digits' class names)

# Zero-shot prompts for the held-out digits: deliberately not the templates the training captions
# were written from (siglip.data.digits.CAPTION_TEMPLATES).
DIGITS_TEMPLATES = [
    "a picture of the number {}.",
    "an image of a handwritten {}.",
    "the digit {}.",
    "a {} written by hand.",
]

# For a class-folder dataset when no templates file is given.
FOLDER_TEMPLATES = ["a photo of a {}."]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def bundled(name: str) -> list[str]:
    """One of the lists in siglip/assets/, e.g. `bundled("imagenet_templates")`."""
    return _lines((importlib.resources.files("siglip") / "assets" / f"{name}.txt").read_text(encoding="utf-8"))


def read_classnames(path: str | Path) -> list[str]:
    """A user's class names, one per line in label order (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class names file not found: {path}")
    names = _lines(path.read_text(encoding="utf-8"))
    if not names:
        raise ValueError(f"{path}: no class names (expected one per line)")
    return names


def read_templates(path: str | Path) -> list[str]:
    """A user's prompt templates, one per line, each with exactly one `{}`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"templates file not found: {path}")
    templates = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.count("{}") != 1:
            raise ValueError(f"{path}:{line_no}: a template needs exactly one '{{}}' for the class name: {line!r}")
        templates.append(line)
    if not templates:
        raise ValueError(f"{path}: no templates (expected one per line, each with '{{}}')")
    return templates
