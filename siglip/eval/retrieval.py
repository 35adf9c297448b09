"""Image-text retrieval: embed every image and every caption of a split, score all against all.

Protocol (SPEC section 7): every caption of an image counts. Text -> image: each caption is a query
over all images. Image -> text: each image is a query over all captions, a hit at k when ANY of its
captions is in the top k. Metrics and the tie rule: siglip.eval.metrics.retrieval_metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from PIL import Image
from torch import Tensor

from siglip.eval.datasets import RetrievalSet
from siglip.eval.embed import embed_images, embed_texts
from siglip.eval.metrics import retrieval_metrics
from siglip.model import SigLIP
from siglip.tokenizer import Tokenizer


def retrieval_scores(
    model: SigLIP,
    tokenizer: Tokenizer,
    transform: Callable[[Image.Image], Tensor],
    data: RetrievalSet,
    batch_size: int = 256,
    num_workers: int = 2,
    bf16: bool = False,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """(n_images, n_texts) cosine scores and the (n_images,) bool mask of readable images. The model
    is put in eval mode and restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        txt = embed_texts(model, tokenizer, data.texts, batch_size, bf16, progress)  # (n_texts, d)
        img, ok = embed_images(model, data.images, transform, batch_size, num_workers, bf16, progress)  # (n_images, d)
    finally:
        model.train(was_training)
    # Cosine similarity ranks exactly like the sigmoid logits t * cos + b (t > 0): no need for t, b.
    return img @ txt.T, ok


def retrieval_results(scores: Tensor, ok: Tensor, data: RetrievalSet) -> dict[str, float]:
    """The recalls and ranks of siglip.evaluate.retrieval_metrics, and the number of unreadable images."""
    metrics = retrieval_metrics(scores, torch.tensor(data.image_of_text, dtype=torch.long), ok)
    metrics["unreadable_images"] = int((~ok).sum())
    return metrics


def retrieval_outputs(scores: Tensor, ok: Tensor, data: RetrievalSet, queries: int = 8, k: int = 5) -> dict:
    """Per-example outputs for reports: `queries` text queries spread evenly over the set, each with
    its own image and the top `k` images (absolute path and cosine score; unreadable images never
    listed)."""
    scores = scores.masked_fill(~ok[:, None], float("-inf"))
    n_texts = scores.shape[1]
    picks = sorted({round(i * (n_texts - 1) / max(1, queries - 1)) for i in range(min(queries, n_texts))})
    out = []
    for j in picks:
        top = scores[:, j].topk(min(k, int(ok.sum()))).indices.tolist()
        out.append(
            {
                "text": data.texts[j],
                "target": os.path.abspath(data.images[data.image_of_text[j]]),
                "top": [{"image": os.path.abspath(data.images[i]), "score": float(scores[i, j])} for i in top],
            }
        )
    return {"task": "retrieval", "queries": out}


def evaluate_retrieval(
    model: SigLIP,
    tokenizer: Tokenizer,
    transform: Callable[[Image.Image], Tensor],
    data: RetrievalSet,
    batch_size: int = 256,
    num_workers: int = 2,
    bf16: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """{image,text}_retrieval_recall@{1,5,10}, mean and median ranks, and the number of unreadable
    images (each a miss). The model is put in eval mode and restored afterwards."""
    scores, ok = retrieval_scores(model, tokenizer, transform, data, batch_size, num_workers, bf16, progress)
    return retrieval_results(scores, ok, data)
