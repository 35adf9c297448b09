"""`siglip.index.open(path)`: an index on disk as one object that answers searches, through its
approximate index when a usable one lies beside the rows, exactly otherwise.

    idx = siglip.index.open("photos.index")
    scores, rows = idx.search(model.embed_texts(["a dog"]), k=10)   # (1, 10) cosines, (1, 10) row ids
    idx.item(int(rows[0, 0]))                                      # {"path": ..., "id": ...}

An approximate search fetches `rerank` x k candidates from the faiss index and scores them again with
the exact float16/float32 rows from disk (read sorted, only those rows), so the scores returned are the
exact cosines, the same as the chunked exact scan gives for those rows. INDEX/ann.json says which rows
the approximate index covers (the index's generation and a fingerprint of its rows); one that is
stale (rows added since), foreign (other rows) or damaged is not used: a warning, once, and exact
search meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from siglip.index import ann
from siglip.index.ann_plan import Plan
from siglip.index.search import topk_file
from siglip.index.store import read_items, read_meta

log = logging.getLogger(__name__)
ANN_JSON, ANN_FORMAT = "ann.json", "siglip-ann"
FINGERPRINT_ROWS = 64


def rows_fingerprint(rows: np.ndarray, meta: dict) -> str:
    """A cheap identity of an index's rows: the model fingerprint, shape, dtype, 64 evenly spaced rows
    and the last one (so a copied ann.json, or rows rewritten by another model, do not match)."""
    h = hashlib.sha1(f"{meta.get('fingerprint')}|{rows.shape}|{rows.dtype}".encode())
    if len(rows):
        picks = np.unique(np.linspace(0, len(rows) - 1, FINGERPRINT_ROWS + 1).astype(np.int64))
        h.update(np.ascontiguousarray(rows[picks]).tobytes())
    return h.hexdigest()[:20]


def map_rows(path: Path) -> np.ndarray:
    """embeddings-G.npy memory-mapped for reading a few rows at random (re-ranking candidates): the
    kernel is told not to read ahead. By default a page fault reads ~128 KiB around the row it needs:
    300 candidates of a 10M-row file not in the page cache took 2.5 s that way, ~30 ms without."""
    rows = np.load(path, mmap_mode="r")
    mm = getattr(rows, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mm.madvise(mmap.MADV_RANDOM)
    return rows


def as_queries(vectors: np.ndarray | Tensor, d: int) -> Tensor:
    """(q, d) float32 unit rows from a (d,) or (q, d) array or tensor."""
    q = torch.as_tensor(np.asarray(vectors) if not isinstance(vectors, Tensor) else vectors).float()
    if q.shape[-1] != d:
        raise ValueError(f"query vectors have dim {q.shape[-1]}, the index has {d} (another model?)")
    q = q.reshape(-1, d)
    return q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)


def rerank(rows: np.ndarray, q: Tensor, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k among each query's candidates: (q, d) queries, (q, c) candidate ids (-1: none) ->
    (q, k) float32 cosines, (q, k) int64 ids. Each distinct candidate row is read once, in file order.
    A query with fewer than k candidates gets -inf / -1 in the missing places. numpy, not torch: a
    query's few hundred rows are too little work for torch's thread pool, whose wake-ups cost
    milliseconds on a busy machine."""
    ids = np.unique(cand[cand >= 0])  # sorted: one pass over the file
    block = np.asarray(rows[ids], dtype=np.float32)  # (u, d)
    where = np.searchsorted(ids, np.where(cand >= 0, cand, ids[0] if len(ids) else 0))
    qs = q.numpy()
    scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    out = np.full((len(q), k), -1, dtype=np.int64)
    for j in range(len(q)):
        mine = np.unique(where[j][cand[j] >= 0])
        s = block[mine] @ qs[j]  # (c,) exact cosines of the stored rows
        top = np.argsort(-s, kind="stable")[:k]
        scores[j, : len(top)] = s[top]
        out[j, : len(top)] = ids[mine[top]]
    return scores, out


def approx_search(
    rows: np.ndarray, index: Any, plan: Plan, q: Tensor, k: int, max_candidates: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top k through a configured faiss `index`: `plan.rerank` x k candidates (at most `max_candidates`,
    never fewer than k: what bounds a search's reads and memory), re-scored exactly."""
    n = plan.rerank * k if max_candidates is None else min(plan.rerank * k, max_candidates)
    cand = ann.search(index, q.numpy(), min(len(rows), max(k, n)))
    return rerank(rows, q, cand, k)


class Index:
    """An index folder written by `siglip embed`; see the module docstring."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta = read_meta(self.path)
        if meta is None:
            raise FileNotFoundError(f"{self.path}: no meta.json; not an index written by siglip embed")
        self.meta: dict = meta
        self.rows: np.ndarray = map_rows(self.path / meta["embeddings"])  # (count, dim)
        self._lock = threading.Lock()
        self._loaded = False
        self._ann: tuple[Any, Plan, dict] | None = None

    @property
    def count(self) -> int:
        return int(self.meta["count"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def item(self, row: int) -> dict:
        """The items line of `row`: {"path", "caption"?} / {"shard", "key"} / {"text"}, with "id"."""
        if not 0 <= int(row) < self.count:
            raise IndexError(f"{self.path}: row {row} out of range (the index has {self.count} rows)")
        return read_items(self.path, self.meta, [int(row)])[0]

    @property
    def ann(self) -> dict | None:
        """ann.json (kind, parameters, recall measured) of a usable approximate index, else None."""
        loaded = self.approximate()
        return None if loaded is None else loaded[2]

    def search(
        self, vectors: np.ndarray | Tensor, k: int, exact: bool = False, max_candidates: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top k rows by cosine of each query (d,) or (q, d): (q, k) float32 cosines (descending),
        (q, k) int64 row ids; k is capped at the row count. Approximate when a usable approximate
        index exists and not `exact` (re-ranking at most `max_candidates` rows per query, never fewer
        than k); the scores are exact cosines either way."""
        q = as_queries(vectors, self.dim)
        k = min(int(k), self.count)
        loaded = None if exact else self.approximate()
        if loaded is None or k == 0:
            scores, rows = topk_file(self.path / self.meta["embeddings"], q, k)
            return scores.numpy().astype(np.float32), rows.numpy().astype(np.int64)
        scores, rows = approx_search(self.rows, loaded[0], loaded[1], q, k, max_candidates)
        short = (rows < 0).any(axis=1)  # a probe found fewer than k rows: answer those exactly
        if short.any():
            s, r = topk_file(self.path / self.meta["embeddings"], q[torch.from_numpy(short)], k)
            scores[short], rows[short] = s.numpy(), r.numpy()
        return scores, rows

    def approximate(self) -> tuple[Any, Plan, dict] | None:
        with self._lock:
            if not self._loaded:
                self._loaded = True
                try:
                    self._ann = self._load_ann()
                except (ValueError, ModuleNotFoundError) as e:
                    log.warning("%s; searching exactly", e)
            return self._ann

    def _load_ann(self) -> tuple[Any, Plan, dict] | None:
        desc = read_ann_json(self.path)
        if desc is None:
            return None
        problem = stale_reason(self.path, desc, self.meta, self.rows)
        if problem:
            raise ValueError(problem)
        index = ann.read(self.path / desc["file"], desc.get("crc32"))
        if ann.count(index) != self.count:
            raise ValueError(f"{self.path / desc['file']}: holds {ann.count(index)} rows, the index {self.count}")
        plan = Plan.from_json(desc["plan"])
        ann.configure(index, plan)
        return index, plan, desc


def read_ann_json(index: Path) -> dict | None:
    """INDEX/ann.json, None when there is none; a damaged one is a ValueError naming it."""
    path = Path(index) / ANN_JSON
    if not path.is_file():
        return None
    try:
        desc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: damaged ({e})") from None
    if not isinstance(desc, dict) or desc.get("format") != ANN_FORMAT or "file" not in desc or "plan" not in desc:
        raise ValueError(f"{path}: not a siglip approximate-index description (format, file, plan)")
    return desc


def stale_reason(index: Path, desc: dict, meta: dict, rows: np.ndarray) -> str:
    """Why the approximate index described by `desc` does not cover these rows ('' when it does)."""
    where = Path(index) / ANN_JSON
    if desc.get("generation") != meta.get("generation") or desc.get("rows") != meta["count"]:
        return (
            f"{where}: stale: the approximate index covers generation {desc.get('generation')} ({desc.get('rows')} "
            f"rows), the index is at generation {meta.get('generation')} ({meta['count']} rows); "
            f"run `siglip index {index}` to bring it up to date"
        )
    if desc.get("rows_fingerprint") != rows_fingerprint(rows, meta):
        return f"{where}: foreign: it was built over other rows (fingerprint differs); run `siglip index {index}`"
    return ""


def open(path: str | Path) -> Index:  # noqa: A001 - siglip.index.open, as the public API names it
    """The index folder at `path` (written by `siglip embed`), ready to search."""
    return Index(path)
