"""Few-shot linear probes, computed as big_vision's `fewshot_lsr` evaluator computes them.

Features: big_vision's `pre_logits`, the image tower's MAP head output. Our image towers have no
projection after the MAP head (neither have the released SigLIP models), so it is the image
embedding before its L2 normalisation; `pre_logits` below takes it from the tower's own submodules
(`model.image`, packed for the CPU as siglip.inference does), not through `encode_image`.

The protocol of big_vision/evaluators/fewshot_lsr.py, step for step:
- shots: for seed s, `rng = np.random.default_rng(s)`; for each class c in label order,
  `rng.permutation` of the train indices of class c; the k-shot set is the first k of every class
  (all of a class that has fewer), so one seed's 1-, 5-, 10- and 25-shot sets are nested;
- the probe: the k-shot features are standardised per dimension with their own mean and standard
  deviation (ddof 0) + 1e-5; a constant feature 100 is appended (the bias, nearly unregularised);
  targets are one-hot over all classes scaled to {-1, +1}; w = (X^T X + l2 I)^-1 X^T Y, through the
  eigendecomposition of X^T X (N >= D) or of X X^T (N < D), l2 = 2^10 by default;
- test: the test features get the train mean, std and constant; prediction = argmax of x w; the
  score is top-1 accuracy over the test split. Seeds 0..seeds-1; shots (1, 5, 10, 25).
Differences: big_vision runs in float32 under JAX; this runs in float64 (the same formula; only a
near-tie could flip). Train features are computed once, for the images some seed draws (the
draws depend on the labels only), test features once for the whole split. A drawn train image that
cannot be read leaves its class one shot short (logged); an unreadable test image is a miss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from siglip import inference
from siglip.eval.embed import embed_images
from siglip.eval.sets import ClassificationSet
from siglip.naflex import NaFlexPatches

log = logging.getLogger(__name__)

BIAS_CONSTANT = 100.0  # big_vision's constant feature for the bias
SHOTS = (1, 5, 10, 25)
L2_REG = 2.0**10


def pre_logits(model: torch.nn.Module, pixels: Tensor | NaFlexPatches) -> Tensor:
    """(n, width) MAP head outputs, not normalised. `model`: a SigLIP, or a wrapper of one."""
    tower = inference.packed_tower(inference._unwrap(model).image)
    if isinstance(pixels, NaFlexPatches):
        return tower(*pixels)
    return tower(pixels)


def image_features(
    model: torch.nn.Module,
    images: Sequence[str] | np.ndarray,
    transform: Callable[[Image.Image], Tensor],
    batch_size: int = 256,
    num_workers: int = 2,
    bf16: bool = False,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """(n, width) float32 `pre_logits` on the CPU and the (n,) bool mask of readable images (the
    others are zero rows). The model should be in eval mode."""
    inner = inference._unwrap(model)
    width = inner.config.image.width
    return embed_images(inner, images, transform, batch_size, num_workers, bf16, progress, pre_logits, width)


def draw_shots(labels: np.ndarray, num_classes: int, shots: Sequence[int], seed: int) -> dict[int, np.ndarray]:
    """{k: train indices of the k-shot set} for one seed, as big_vision draws them (class-major)."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.where(labels == c)[0]) for c in range(num_classes)]
    return {k: np.concatenate([p[:k] for p in per_class]).astype(np.int64) for k in shots}


@dataclass
class LinearProbe:
    mean: np.ndarray  # (1, D)
    std: np.ndarray  # (1, D)
    w: np.ndarray  # (D + 1, C)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n,) argmax class of each row of x (n, D)."""
        z = np.pad((np.asarray(x, np.float64) - self.mean) / self.std, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)
        return np.argmax(z @ self.w, axis=1)


def fit_probe(x: np.ndarray, y: np.ndarray, num_classes: int, l2_reg: float = L2_REG) -> LinearProbe:
    """big_vision's regularised least squares on features x (N, D) and labels y (N,)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True) + 1e-5
    x = np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)  # (N, D + 1)
    targets = 2.0 * np.eye(num_classes)[np.asarray(y)] - 1.0  # (N, C) in {-1, +1}
    if x.shape[0] >= x.shape[1]:  # (X^T X + l2 I)^-1 X^T Y
        eigs, q = np.linalg.eigh(x.T @ x)
        lhs, rhs = q, q.T @ (x.T @ targets)
    else:  # X^T (X X^T + l2 I)^-1 Y
        eigs, q = np.linalg.eigh(x @ x.T)
        lhs, rhs = x.T @ q, q.T @ targets
    return LinearProbe(mean, std, (lhs / (eigs + l2_reg)[None, :]) @ rhs)


def fewshot_accuracies(
    draws: dict[int, dict[int, np.ndarray]],
    train_x: np.ndarray,
    train_y: np.ndarray,
    train_ok: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    test_ok: np.ndarray,
    num_classes: int,
    l2_reg: float = L2_REG,
) -> dict[int, list[float]]:
    """{k: [top-1 accuracy of seed 0, 1, ...]}. draws: {seed: {k: train indices}} (`draw_shots`);
    train_x rows are indexed like train_y; an unreadable test image (test_ok False) is a miss."""
    out: dict[int, list[float]] = {}
    for seed in sorted(draws):
        for k, idx in draws[seed].items():
            idx = idx[train_ok[idx]]
            probe = fit_probe(train_x[idx], train_y[idx], num_classes, l2_reg)
            correct = (probe.predict(test_x) == test_y) & test_ok
            out.setdefault(k, []).append(float(correct.mean()))
    return out


def fewshot_metrics(accuracies: dict[int, list[float]]) -> dict[str, float]:
    """`{k}shot_acc1` (the mean over seeds), `{k}shot_acc1_std` (ddof 0) and `{k}shot_acc1_seed{s}`."""
    out = {}
    for k, accs in accuracies.items():
        out[f"{k}shot_acc1"] = float(np.mean(accs))
        out[f"{k}shot_acc1_std"] = float(np.std(accs))
        out.update({f"{k}shot_acc1_seed{s}": a for s, a in enumerate(accs)})
    return out


def evaluate_fewshot(
    model: torch.nn.Module,
    transform: Callable[[Image.Image], Tensor],
    train: ClassificationSet,
    test: ClassificationSet,
    shots: Sequence[int] = SHOTS,
    seeds: int = 3,
    l2_reg: float = L2_REG,
    batch_size: int = 256,
    num_workers: int = 2,
    bf16: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """Few-shot top-1 per shot count over `seeds` seeds (`fewshot_metrics`), and the number of
    unreadable test images. The model is put in eval mode and restored afterwards."""
    if list(train.classnames) != list(test.classnames):
        raise ValueError(
            f"the train and test splits name different classes ({len(train.classnames)} vs {len(test.classnames)}, "
            f"e.g. {train.classnames[:3]} vs {test.classnames[:3]})"
        )
    num_classes = len(test.classnames)
    train_y = np.asarray(train.labels, dtype=np.int64)
    draws = {s: draw_shots(train_y, num_classes, shots, s) for s in range(seeds)}
    needed = np.unique(np.concatenate([i for d in draws.values() for i in d.values()]))  # features for these only
    subset = train.images[needed] if isinstance(train.images, np.ndarray) else [train.images[i] for i in needed]
    was_training = model.training
    model.eval()
    try:
        feats, ok = image_features(model, subset, transform, batch_size, num_workers, bf16, progress)
        test_x, test_ok = image_features(model, test.images, transform, batch_size, num_workers, bf16, progress)
    finally:
        model.train(was_training)
    if (bad := int((~ok).sum())) > 0:
        log.warning(
            "%d of %d drawn train images could not be read: their classes are that many shots short", bad, len(ok)
        )
    rows = {s: {k: np.searchsorted(needed, idx) for k, idx in d.items()} for s, d in draws.items()}  # into `needed`
    accs = fewshot_accuracies(
        rows, feats.numpy(), train_y[needed], ok.numpy(), test_x.numpy(), np.asarray(test.labels), test_ok.numpy(),
        num_classes, l2_reg,
    )  # fmt: skip
    return {**fewshot_metrics(accs), "unreadable_images": int((~test_ok).sum())}


def default_splits(dataset: str) -> tuple[str, str]:
    """(train split, test split) of a dataset for few-shot probes ("" = its evaluation split)."""
    return "train", "test" if dataset == "folder" else ""
