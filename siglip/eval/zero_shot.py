"""Zero-shot classification: class embeddings from prompt templates, image embeddings, metrics.

Method (CLIP / SigLIP, SPEC section 7): per class, embed every template filled with the class name,
average the normalised embeddings, renormalise; predict the argmax of image . class.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch import Tensor

from siglip.eval.datasets import ClassificationSet
from siglip.eval.embed import embed_images, embed_texts
from siglip.eval.metrics import zero_shot_metrics
from siglip.model import SigLIP, l2_normalize
from siglip.tokenizer import Tokenizer


@torch.inference_mode()
def class_embeddings(
    model: SigLIP,
    tokenizer: Tokenizer,
    classnames: list[str],
    templates: list[str],
    batch_size: int = 256,
    bf16: bool = False,
    progress: bool = False,
) -> Tensor:
    """(c, d) unit rows on the CPU: per class the renormalised mean of its normalised template
    embeddings. All c * len(templates) prompts are embedded in batches of `batch_size`."""
    prompts = [t.format(name) for name in classnames for t in templates]  # class-major
    z = embed_texts(model, tokenizer, prompts, batch_size, bf16, progress)  # (c * templates, d), unit rows
    return l2_normalize(z.view(len(classnames), len(templates), -1).mean(dim=1))


def zero_shot_scores(
    model: SigLIP,
    tokenizer: Tokenizer,
    transform: Callable[[Image.Image], Tensor],
    data: ClassificationSet,
    batch_size: int = 256,
    num_workers: int = 2,
    bf16: bool = False,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """(n, c) cosine scores image . class and the (n,) bool mask of readable images. The model is
    put in eval mode and restored afterwards."""
    if not data.templates:
        raise ValueError(
            "no prompt templates for zero-shot classification: pass a templates file (one a line, with {})"
        )
    was_training = model.training
    model.eval()
    try:
        cls = class_embeddings(model, tokenizer, data.classnames, data.templates, batch_size, bf16, progress)  # (c, d)
        img, ok = embed_images(model, data.images, transform, batch_size, num_workers, bf16, progress)  # (n, d)
    finally:
        model.train(was_training)
    return img @ cls.T, ok


def zero_shot_results(scores: Tensor, ok: Tensor, data: ClassificationSet) -> dict[str, float]:
    """acc1, acc5, mean_per_class_recall and the number of unreadable images (each counted wrong)."""
    metrics = zero_shot_metrics(scores, torch.tensor(data.labels, dtype=torch.long), ok)
    metrics["unreadable_images"] = int((~ok).sum())
    return metrics


def zero_shot_outputs(scores: Tensor, ok: Tensor, data: ClassificationSet) -> dict:
    """Per-example outputs for reports (confusion matrix, worst classes): the class names, each
    image's true label and top-1 prediction (-1 for an unreadable image)."""
    predictions = torch.where(ok, scores.argmax(dim=1), torch.full_like(ok, -1, dtype=torch.long))
    return {
        "task": "zero_shot",
        "classnames": list(data.classnames),
        "labels": [int(y) for y in data.labels],
        "predictions": predictions.tolist(),
    }


def evaluate_zero_shot(
    model: SigLIP,
    tokenizer: Tokenizer,
    transform: Callable[[Image.Image], Tensor],
    data: ClassificationSet,
    batch_size: int = 256,
    num_workers: int = 2,
    bf16: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """acc1, acc5, mean_per_class_recall over every image of `data`, and the number of unreadable
    images (each counted as wrong). The model is put in eval mode and restored afterwards."""
    scores, ok = zero_shot_scores(model, tokenizer, transform, data, batch_size, num_workers, bf16, progress)
    return zero_shot_results(scores, ok, data)
