"""One generation of an index, held open: the rows, items and offsets files that one meta.json names,
and the approximate index built for exactly those rows.

A `Generation` opens its three files once and keeps them open (the rows memory-mapped and as a file
for the exact scan, the offsets memory-mapped, the items file read by position), so everything it
answers comes from one generation, and it keeps answering after a writer has committed the next one
and deleted these files' names: on POSIX the data stays until the last holder closes it. Opening
reads meta.json, then its files; when a newer commit removed them in between, it reads meta.json
again (`open_generation`). Its `tag` ("G-xxxxxxxxxx": the generation and a hash of meta.json's bytes)
names it in thumbnail URLs; a generation of an index rewritten from scratch never has the tag of
the one it replaced.

Also here: what an approximate index must match to be used for a generation (INDEX/ann.json's
generation, uid, row count and a fingerprint of the rows), and the re-ranking of its candidates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from siglip.index import ann
from siglip.index.ann_plan import Plan
from siglip.index.search import npy_layout, pread_into, topk_fd
from siglip.index.store import parse_meta

log = logging.getLogger(__name__)
ANN_JSON, ANN_FORMAT = "ann.json", "siglip-ann"
FINGERPRINT_ROWS = 64
OPEN_TRIES = 5


def rows_fingerprint(rows: np.ndarray, meta: dict) -> str:
    """A cheap identity of an index's rows: the model fingerprint, shape, dtype, 64 evenly spaced rows
    and the last one (so a copied ann.json, or rows rewritten by another model, do not match)."""
    h = hashlib.sha1(f"{meta.get('fingerprint')}|{rows.shape}|{rows.dtype}".encode())
    if len(rows):
        picks = np.unique(np.linspace(0, len(rows) - 1, FINGERPRINT_ROWS + 1).astype(np.int64))
        h.update(np.ascontiguousarray(rows[picks]).tobytes())
    return h.hexdigest()[:20]


def map_rows(path: Path | Any) -> np.ndarray:
    """embeddings-G.npy (a path, or that file open) memory-mapped for reading a few rows at random
    (re-ranking candidates): the kernel is told not to read ahead. By default a page fault reads
    ~128 KiB around the row it needs: 300 candidates of a 10M-row file not in the page cache took
    2.5 s that way, ~30 ms without."""
    if isinstance(path, (str, Path)):
        rows = np.load(path, mmap_mode="r")
    else:
        offset, shape, dtype = npy_layout(path)
        rows = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
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
    if not isinstance(desc["plan"], dict) or not isinstance(desc["plan"].get("kind"), str):
        raise ValueError(f"{path}: 'plan' is {desc['plan']!r}, not a plan (an object with its 'kind')")
    return desc


def stale_reason(index: Path, desc: dict, meta: dict, rows: np.ndarray) -> str:
    """Why the approximate index described by `desc` does not cover these rows ('' when it does)."""
    where = Path(index) / ANN_JSON
    same_uid = not (desc.get("uid") and meta.get("uid")) or desc["uid"] == meta["uid"]
    if desc.get("generation") != meta.get("generation") or desc.get("rows") != meta["count"] or not same_uid:
        return (
            f"{where}: stale: the approximate index covers generation {desc.get('generation')} ({desc.get('rows')} "
            f"rows), the index is at generation {meta.get('generation')} ({meta['count']} rows); "
            f"run `siglip index {index}` to bring it up to date"
        )
    if desc.get("rows_fingerprint") != rows_fingerprint(rows, meta):
        return f"{where}: foreign: it was built over other rows (fingerprint differs); run `siglip index {index}`"
    return ""


# --------------------------------------------------------------------------------------------------
# one generation, held open


def _stat(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def stamp(index: Path) -> tuple:
    """What changes when a writer commits: meta.json's and ann.json's inode, mtime and size."""
    return _stat(index / "meta.json"), _stat(index / ANN_JSON)


class Generation:
    """The files of one meta.json, open; see the module docstring. `rows` (count, dim) memory-mapped."""

    def __init__(self, path: Path, meta: dict, raw: bytes, stamp: tuple):
        self.path, self.meta, self.stamp = path, meta, stamp
        self.tag = f"{meta.get('generation', 0)}-{hashlib.sha1(raw).hexdigest()[:10]}"
        self._rows_file = open(path / meta["embeddings"], "rb", buffering=0)  # noqa: SIM115 - held open
        self._layout = npy_layout(self._rows_file)
        self.rows: np.ndarray = map_rows(self._rows_file)  # (count, dim)
        self.items_file = open(path / meta["items"], "rb", buffering=0) if meta.get("items") else None  # noqa: SIM115
        self._items_size = os.fstat(self.items_file.fileno()).st_size if self.items_file else 0
        self.offsets = np.zeros(0, np.int64)  # byte offset of each items line
        if meta.get("offsets"):
            with open(path / meta["offsets"], "rb", buffering=0) as f:
                self.offsets = map_rows(f)  # the map keeps the file; the fd may close
        self._lock = threading.Lock()
        self._ann: tuple[Any, Plan, dict] | None = None
        self.ann_loaded = False

    @property
    def count(self) -> int:
        return int(self.meta["count"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def items(self, rows: list[int]) -> list[dict]:
        """The items.jsonl objects of `rows` (any order), read by byte offset from the open file."""
        out = []
        for r in rows:
            if not 0 <= int(r) < self.count or self.items_file is None:
                raise IndexError(f"{self.path}: row {r} out of range (generation {self.tag} has {self.count} rows)")
            start = int(self.offsets[r])
            end = int(self.offsets[r + 1]) if r + 1 < len(self.offsets) else self._items_size
            out.append(json.loads(os.pread(self.items_file.fileno(), end - start, start)))
        return out

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
            scores, rows = self._scan(q, k)
            return scores.numpy().astype(np.float32), rows.numpy().astype(np.int64)
        scores, rows = approx_search(self.rows, loaded[0], loaded[1], q, k, max_candidates)
        short = (rows < 0).any(axis=1)  # a probe found fewer than k rows: answer those exactly
        if short.any():
            s, r = self._scan(q[torch.from_numpy(short)], k)
            scores[short], rows[short] = s.numpy(), r.numpy()
        return scores, rows

    def read_rows(self, first: int, last: int) -> np.ndarray:
        """Rows first..last-1 in their stored dtype, read from the open file into a new array: for
        streaming all rows (an export). Not `rows[first:last]`: the map reads ahead nothing (set for
        re-ranking) and keeps every page it touched counted in the process's RSS."""
        offset, (_, d), dtype = self._layout
        out = np.empty((max(0, last - first), d), dtype=dtype)
        got = pread_into(self._rows_file.fileno(), memoryview(out).cast("B"), offset + first * out.itemsize * d)
        if got != out.nbytes:
            raise ValueError(f"{self.path / self.meta['embeddings']}: truncated before row {last}")
        return out

    def _scan(self, q: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return topk_fd(self._rows_file.fileno(), self._layout, q, k, name=self.path / self.meta["embeddings"])

    def approximate(self) -> tuple[Any, Plan, dict] | None:
        """(faiss index, plan, ann.json) when INDEX/ann.json describes an approximate index of exactly
        this generation's rows; else None (a warning, once: exact search)."""
        with self._lock:
            if not self.ann_loaded:
                self.ann_loaded = True
                try:
                    self._ann = self._load_ann()
                except (ValueError, ModuleNotFoundError) as e:
                    log.warning("%s; searching exactly", e)
                except Exception as e:  # noqa: BLE001 - a damaged ann.json never stops a search
                    log.warning("%s: unusable (%s: %s); searching exactly", self.path / ANN_JSON, type(e).__name__, e)
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


def open_generation(index: Path) -> Generation:
    """The generation meta.json names now, open. FileNotFoundError when there is no meta.json;
    ValueError when it is not an index's; when a newer commit deleted the files between reading
    meta.json and opening them, meta.json is read again (OPEN_TRIES times)."""
    index = Path(index)
    for attempt in range(OPEN_TRIES):
        seen = stamp(index)
        path = index / "meta.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{index}: no meta.json; not an index written by siglip embed") from None
        meta = parse_meta(raw, path)
        try:
            return Generation(index, meta, raw, seen)
        except FileNotFoundError:
            if attempt == OPEN_TRIES - 1:
                raise
    raise AssertionError("unreachable")
