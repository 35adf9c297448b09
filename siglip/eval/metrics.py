"""Evaluation metrics: pure functions over score matrices (no models, no data loading).

Ranks are 1-based. Tie rule (everywhere): a wrong candidate that scores EXACTLY as high as the
correct one is ranked ahead of it, i.e. rank = 1 + #(wrong candidates with score >= correct score).
This is pessimistic on purpose: a model that gives every candidate the same score gets rank n, not
rank 1. Without exact ties it is the usual "position in the sorted list" (CLIP_benchmark's top-k).

Unreadable images: callers pass a `valid` mask. A query that involves an unreadable image is never a
hit (in any recall@k, even when k >= the number of candidates) and takes the worst rank in the mean
and median rank, so it is never dropped from a denominator.
"""

from __future__ import annotations

import torch
from torch import Tensor

RECALL_AT = (1, 5, 10)


# --------------------------------------------------------------------------------------------------
# Zero-shot classification


def class_ranks(scores: Tensor, labels: Tensor) -> Tensor:
    """(n,) long: the 1-based rank of the true class of each row. scores (n, c), labels (n,)."""
    correct = scores.gather(1, labels[:, None])  # (n, 1)
    ahead = (scores >= correct).sum(dim=1) - 1  # minus the true class itself
    return ahead + 1


def topk_accuracy(scores: Tensor, labels: Tensor, k: int, valid: Tensor | None = None) -> float:
    """Fraction of rows whose true class ranks in the top k. scores (n, c), labels (n,), valid (n,) bool."""
    hit = class_ranks(scores, labels) <= k
    if valid is not None:
        hit &= valid
    return hit.float().mean().item()


def mean_per_class_recall(scores: Tensor, labels: Tensor, valid: Tensor | None = None) -> float:
    """Mean over the classes present in `labels` of (top-1 hits / examples of the class); a class
    that is never predicted correctly contributes 0, a class with no examples is left out
    (sklearn's balanced_accuracy_score, as CLIP_benchmark computes it)."""
    hit = class_ranks(scores, labels) == 1
    if valid is not None:
        hit &= valid
    present = labels.unique()
    recalls = [hit[labels == c].float().mean() for c in present]
    return torch.stack(recalls).mean().item()


def zero_shot_metrics(scores: Tensor, labels: Tensor, valid: Tensor | None = None) -> dict[str, float]:
    """acc1, acc5, mean_per_class_recall (CLIP_benchmark's names). scores (n, c), labels (n,),
    valid (n,) bool: False for an unreadable image (always wrong)."""
    return {
        "acc1": topk_accuracy(scores, labels, 1, valid),
        "acc5": topk_accuracy(scores, labels, 5, valid),
        "mean_per_class_recall": mean_per_class_recall(scores, labels, valid),
    }


# --------------------------------------------------------------------------------------------------
# Image-text retrieval


def _check_image_of_text(image_of_text: Tensor, n_images: int) -> None:
    counts = torch.bincount(image_of_text, minlength=n_images)
    if len(counts) > n_images:
        raise ValueError(f"image_of_text names image {int(image_of_text.max())}, but there are {n_images} images")
    if (counts == 0).any():
        raise ValueError(f"image {int((counts == 0).nonzero()[0])} has no caption: every image needs at least one")


def image_retrieval_ranks(scores: Tensor, image_of_text: Tensor, chunk: int = 4096) -> Tensor:
    """Text query -> image. (n_texts,) long: 1-based rank of each text's own image among all images.
    scores (n_images, n_texts); image_of_text (n_texts,): the image each text describes."""
    n_images, n_texts = scores.shape
    _check_image_of_text(image_of_text, n_images)
    ranks = torch.empty(n_texts, dtype=torch.long)
    for s in range(0, n_texts, chunk):  # (n_images, chunk) at a time: COCO is 5k x 25k
        block = scores[:, s : s + chunk]
        correct = block.gather(0, image_of_text[None, s : s + chunk])  # (1, chunk)
        ranks[s : s + chunk] = (block >= correct).sum(dim=0)  # includes the image itself: rank 1 + ahead
    return ranks


def text_retrieval_ranks(scores: Tensor, image_of_text: Tensor, chunk: int = 1024) -> Tensor:
    """Image query -> text. (n_images,) long: 1-based rank of the FIRST of the image's captions in
    the sorted list of all texts (a hit at k if ANY of its captions is in the top k); the image's
    other captions are not counted as ahead of it. scores (n_images, n_texts)."""
    n_images, n_texts = scores.shape
    _check_image_of_text(image_of_text, n_images)
    ranks = torch.empty(n_images, dtype=torch.long)
    for s in range(0, n_images, chunk):
        block = scores[s : s + chunk]  # (chunk, n_texts)
        own = image_of_text[None, :] == torch.arange(s, s + len(block))[:, None]  # (chunk, n_texts)
        best = block.masked_fill(~own, -float("inf")).max(dim=1, keepdim=True).values  # (chunk, 1)
        ranks[s : s + chunk] = ((block >= best) & ~own).sum(dim=1) + 1
    return ranks


def _rank_metrics(prefix: str, ranks: Tensor, valid: Tensor, worst: int) -> dict[str, float]:
    out = {f"{prefix}_recall@{k}": ((ranks <= k) & valid).float().mean().item() for k in RECALL_AT}
    r = torch.where(valid, ranks, worst).double()
    out[f"{prefix}_mean_rank"] = r.mean().item()
    out[f"{prefix}_median_rank"] = r.quantile(0.5).item()  # mean of the two middle ranks when n is even
    return out


def retrieval_metrics(scores: Tensor, image_of_text: Tensor, image_valid: Tensor | None = None) -> dict[str, float]:
    """CLIP_benchmark's names: `image_retrieval_recall@k` (text query, image found) and
    `text_retrieval_recall@k` (image query, any of its captions found), k in 1, 5, 10, plus
    `{image,text}_retrieval_{mean,median}_rank`.

    scores (n_images, n_texts); image_of_text (n_texts,) long; image_valid (n_images,) bool, False
    for an unreadable image: it is a miss as a query, its captions miss as queries, and as a
    candidate it ranks below every readable image."""
    n_images, n_texts = scores.shape
    if image_valid is None:
        image_valid = torch.ones(n_images, dtype=torch.bool)
    scores = scores.masked_fill(~image_valid[:, None], -float("inf"))
    text_valid = image_valid[image_of_text]
    return {
        **_rank_metrics("image_retrieval", image_retrieval_ranks(scores, image_of_text), text_valid, n_images),
        **_rank_metrics("text_retrieval", text_retrieval_ranks(scores, image_of_text), image_valid, n_texts),
    }
