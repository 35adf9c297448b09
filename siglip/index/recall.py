"""Recall of an approximate index, measured against the exact scan, and the search effort (`nprobe` /
efSearch, and re-ranked candidates) tuned to a target recall.

Queries are rows held out of the k-means sample (and captions' text embeddings, when the index has
them). A row query finds itself in both searches; that match is removed from both lists before
comparing, so recall@k is over its k true neighbours. recall@k = |approx top k & exact top k| / k,
averaged over the queries.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from siglip.index import ann
from siglip.index.ann_plan import Plan
from siglip.index.handle import approx_search
from siglip.index.search import topk_file

KS = (1, 10, 100)
LATENCY_QUERIES = 50  # single-query searches timed for the approximate index (median reported)
EXACT_LATENCY_QUERIES = 3  # the exact scan is slow at scale: fewer


def drop_self(ids: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """(q, k + 1) ids -> (q, k): each row without its query's own id (or its last entry when absent)."""
    out = np.empty((len(ids), k), dtype=np.int64)
    for j, (row, me) in enumerate(zip(ids, self_ids)):
        keep = row[row != me] if me >= 0 else row
        out[j] = np.pad(keep[:k], (0, max(0, k - len(keep[:k]))), constant_values=-1)
    return out


def exact_truth(rows_file: Path, q: Tensor, self_ids: np.ndarray, k: int) -> np.ndarray:
    """(q, k) ids of the exact k nearest rows of each query, itself excluded."""
    _, ids = topk_file(rows_file, q, k + 1)
    return drop_self(ids.numpy(), self_ids, k)


def per_query(found: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """(q,) recall@k of each query."""
    return np.array([len(np.intersect1d(f[:k][f[:k] >= 0], t[:k])) / k for f, t in zip(found, truth)])


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(per_query(found, truth, k).mean())


def lower_bound(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """One-sided 95% lower confidence bound of recall@k over queries like these: the mean minus 1.645
    standard errors. Tuning to it, not to the mean, keeps new queries at the target too."""
    r = per_query(found, truth, k)
    return float(r.mean() - 1.645 * r.std(ddof=1) / np.sqrt(len(r))) if len(r) > 1 else float(r.mean())


def approx_ids(rows: np.ndarray, index: Any, plan: Plan, q: Tensor, self_ids: np.ndarray, k: int) -> np.ndarray:
    ann.configure(index, plan)
    _, ids = approx_search(rows, index, plan, q, k + 1)
    return drop_self(ids, self_ids, k)


def _ladder(plan: Plan) -> list[int]:
    """Search efforts to try, cheapest first."""
    if plan.kind == "flat":
        return [1]
    top = plan.nlist if plan.kind != "hnsw" else 2048
    steps = [2**i for i in range(0, 12) if 2**i <= top]
    return [s for s in steps if plan.kind != "hnsw" or s >= 16] or [top]


def tune(
    rows: np.ndarray, index: Any, plan: Plan, q: Tensor, self_ids: np.ndarray, truth: np.ndarray, target: float
) -> tuple[Plan, float]:
    """The cheapest (nprobe, rerank) whose recall@10 reaches `target` (its 95% lower confidence bound
    over these queries does): nprobe doubles, and re-ranked candidates grow when nprobe alone stalls.
    Returns the plan and that bound (the best found when none reaches the target)."""
    k = min(10, truth.shape[1])
    best: tuple[float, Plan] = (-1.0, plan)
    reranks = [plan.rerank] + ([plan.rerank * f for f in (3, 10, 30)] if plan.kind == "ivf-pq" else [])
    for rerank in reranks:
        last = -1.0
        for effort in _ladder(plan):
            trial = Plan.from_json({**plan.to_json(), "nprobe": effort, "rerank": rerank})
            r = lower_bound(approx_ids(rows, index, trial, q, self_ids, k), truth, k)
            if r > best[0]:
                best = (r, trial)
            if r >= target:
                return trial, r
            if r - last < 1e-3 and effort >= 16:  # more lists no longer help: candidates are the limit
                break
            last = r
    return best[1], best[0]


def latency_ms(search, q: Tensor, n: int) -> float:
    """Median wall time of single-query `search(q[j:j+1])` over the first n queries, in ms."""
    times = []
    for j in range(min(n, len(q))):
        t = time.perf_counter()
        search(q[j : j + 1])
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times) if times else float("nan")


def measure(
    rows: np.ndarray, rows_file: Path, index: Any, plan: Plan, q: Tensor, self_ids: np.ndarray, truth: np.ndarray
) -> dict:
    """recall@1/@10/@100 (those the row count allows), the approximate and exact single-query
    latencies (median ms) and, for PQ codes, recall@10 of the codes alone (no re-ranking)."""
    kmax = truth.shape[1]
    # each k searched on its own: candidates scale with k, so top 100's first 10 would overstate recall@10
    out: dict = {
        f"recall@{k}": round(recall_at(approx_ids(rows, index, plan, q, self_ids, k), truth, k), 4)
        for k in KS
        if k <= kmax
    }
    if plan.kind == "ivf-pq":
        alone = Plan.from_json({**plan.to_json(), "rerank": 1})
        out["recall@10_codes_alone"] = round(recall_at(approx_ids(rows, index, alone, q, self_ids, 10), truth, 10), 4)
    ann.configure(index, plan)
    torch_q = q.contiguous()
    out["latency_ms"] = round(
        latency_ms(lambda x: approx_search(rows, index, plan, x, 10), torch_q, LATENCY_QUERIES), 3
    )
    out["exact_latency_ms"] = round(
        latency_ms(lambda x: topk_file(rows_file, x, 10), torch_q, EXACT_LATENCY_QUERIES), 1
    )
    out["queries"] = len(q)
    return out


def as_tensor(x: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
