"""Evaluation metrics: pure functions over score matrices (no models, no data loading)."""

from __future__ import annotations

import torch
from torch import Tensor


def topk_accuracy(scores: Tensor, labels: Tensor, k: int) -> float:
    """Fraction of rows whose true class is among the k highest scores. scores (n, c), labels (n,).
    Ties are broken by class index (torch.topk's order)."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices  # (n, k)
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def mean_per_class_recall(pred: Tensor, labels: Tensor, num_classes: int) -> float:
    """Mean over the classes present in `labels` of (correct predictions / examples of the class)."""
    recalls = []
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            recalls.append((pred[mask] == c).float().mean())
    return torch.stack(recalls).mean().item()


def zero_shot_metrics(scores: Tensor, labels: Tensor) -> dict[str, float]:
    """acc1, acc5, mean_per_class_recall (CLIP_benchmark's names) for scores (n, c), labels (n,)."""
    return {
        "acc1": topk_accuracy(scores, labels, 1),
        "acc5": topk_accuracy(scores, labels, 5),
        "mean_per_class_recall": mean_per_class_recall(scores.argmax(dim=1), labels, scores.shape[1]),
    }
