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

The index follows its folder: each call answers from one generation (`current()`, see
siglip.index.generation), and when meta.json or ann.json has changed since (a run of `siglip embed`
or `siglip index` committed), it first switches to the newest generation, whole: rows, items and
approximate index together. A request in flight keeps the generation it started with. A generation
that cannot be opened (meta.json gone or damaged mid-way) leaves the current one in use, with a
warning.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from siglip.index.ann_plan import Plan
from siglip.index.generation import (  # noqa: F401 - their home before generations; imported from here
    ANN_FORMAT,
    ANN_JSON,
    Generation,
    approx_search,
    as_queries,
    map_rows,
    open_generation,
    read_ann_json,
    rerank,
    rows_fingerprint,
    stale_reason,
    stamp,
)

log = logging.getLogger(__name__)


class Index:
    """An index folder written by `siglip embed`; see the module docstring. `follow=False` stays on
    the generation it opened with."""

    def __init__(self, path: str | Path, follow: bool = True):
        self.path = Path(path)
        self.follow = follow
        self._gen = open_generation(self.path)
        self._switching = threading.Lock()
        self._failed: tuple | None = None  # the folder's stamp when opening its generation last failed

    def current(self) -> Generation:
        """The generation to answer with (hold it for all of one request's reads): the newest
        committed one when following."""
        if self.follow:
            self.refresh()
        return self._gen

    def refresh(self) -> bool:
        """Switch to the newest committed generation if meta.json or ann.json changed; True if it did.
        Never blocks: while another thread opens the new generation, this one answers from the
        current one. The new generation is opened whole (its approximate index loaded too, when the
        current one had loaded its own) before it is used."""
        now, gen = stamp(self.path), self._gen
        if now == gen.stamp or now == self._failed or not self._switching.acquire(blocking=False):
            return False
        try:
            try:
                new = open_generation(self.path)
            except (OSError, ValueError) as e:
                if self._failed != now:
                    log.warning("%s; still answering from generation %s", e, gen.tag)
                self._failed = now
                return False
            if new.meta.get("fingerprint") != gen.meta.get("fingerprint"):
                log.warning(
                    "%s: generation %s was embedded with other weights (fingerprint %s, not %s); still answering "
                    "from generation %s", self.path, new.tag, new.meta.get("fingerprint"), gen.meta.get("fingerprint"),
                    gen.tag,
                )  # fmt: skip
                self._failed = now
                return False
            if gen.ann_loaded:
                new.approximate()
            self._gen = new
            if new.tag != gen.tag:
                log.info("%s: now at generation %s (%d rows; was %s)", self.path, new.tag, new.count, gen.tag)
            return True
        finally:
            self._switching.release()

    @property
    def meta(self) -> dict:
        return self.current().meta

    @property
    def rows(self) -> np.ndarray:
        """(count, dim) memory-mapped rows of the current generation."""
        return self.current().rows

    @rows.setter
    def rows(self, value: np.ndarray) -> None:
        self._gen.rows = value

    @property
    def count(self) -> int:
        return self.current().count

    @property
    def dim(self) -> int:
        return self.current().dim

    def item(self, row: int) -> dict:
        """The items line of `row`: {"path", "caption"?} / {"shard", "key"} / {"text"}, with "id"."""
        return self.current().items([int(row)])[0]

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
        return self.current().search(vectors, k, exact, max_candidates)

    def approximate(self) -> tuple[Any, Plan, dict] | None:
        return self.current().approximate()


def open(path: str | Path) -> Index:  # noqa: A001 - siglip.index.open, as the public API names it
    """The index folder at `path` (written by `siglip embed`), ready to search."""
    return Index(path)
