"""The evaluators a config lists (`Config.evals`), run during and after training.

Each `EvalConfig` names a dataset; this module turns it into images, labels, class names and
templates, and runs `siglip.zero_shot`. Results are flat dicts like {"digits/acc1": 0.93}.
"""

from __future__ import annotations

from pathlib import Path

from .config import EvalConfig
from .model import SigLIP
from .prompts import DIGITS_CLASSNAMES, DIGITS_TEMPLATES
from .tokenizer import Tokenizer
from .transforms import image_transform
from .zero_shot import evaluate_zero_shot, read_class_folder


def zero_shot_task(ev: EvalConfig, digits_root: str) -> tuple[list[str], list[int], list[str], list[str]]:
    """(paths, labels, class names, templates) for one evaluator."""
    if ev.dataset == "digits":
        from .digits import ensure_digits

        # the held-out folders are named by DIGITS_CLASSNAMES; labels index the sorted folder names
        paths, labels, classes = read_class_folder(ensure_digits(ev.path or digits_root) / "heldout")
        if sorted(classes) != sorted(DIGITS_CLASSNAMES):
            raise ValueError(f"{ev.path or digits_root}/heldout: expected the ten digit folders, found {classes}")
        return paths, labels, classes, DIGITS_TEMPLATES
    if ev.dataset == "folder":
        if not ev.path:
            raise ValueError("evaluator 'folder' needs a path (one sub-folder per class)")
        paths, labels, classes = read_class_folder(Path(ev.path))
        return paths, labels, [c.replace("_", " ") for c in classes], ["a photo of a {}."]
    raise ValueError(f"unknown evaluator dataset {ev.dataset!r}: choose 'digits' or 'folder'")


def run_evals(
    evals: list[EvalConfig],
    model: SigLIP,
    tokenizer: Tokenizer,
    image_size: int,
    resample: str,
    digits_root: str,
    num_workers: int = 2,
    bf16: bool = False,
    step: int | None = None,
) -> dict[str, float]:
    """Run every evaluator due at `step` (all of them when step is None: the end of training)."""
    results: dict[str, float] = {}
    transform = image_transform(image_size, resample)
    for ev in evals:
        if step is not None and not (ev.every and step % ev.every == 0):
            continue
        paths, labels, classnames, templates = zero_shot_task(ev, digits_root)
        metrics = evaluate_zero_shot(
            model,
            tokenizer,
            transform,
            paths,
            labels,
            classnames,
            templates,
            ev.batch_size,
            num_workers,
            bf16,
        )
        results.update({f"{ev.dataset}/{k}": v for k, v in metrics.items()})
    return results
