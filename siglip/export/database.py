"""The export loop every vector-database target shares (`milvus.py`, `lancedb.py`): rows streamed from
the index a batch at a time into a collection (table) that the target has created or checked, resumable
after a kill.

Resume rests on one fact: a row is either in the collection or not, and the export writes rows in id
order. The rows already there are counted, not trusted: the resume point `p` is the largest with
exactly `p` rows of id < `p` (ids 0..p-1 all present, found by binary search on counts), whatever an
interrupted run left visible past it (half a batch, a batch whose write landed after a later one's) is
deleted, and the export goes on from `p` with plain inserts. So no id is ever written twice, however
the last run died. Rows 0 and p-1 are compared with the index's before resuming: a collection written
from other rows (another index, a rebuilt one) is an error, not a silent mix. An index that has grown
since the last export (rows appended by `siglip embed`) resumes where the collection ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from siglip.export import Options
from siglip.export.rows import Batch, iter_batches, open_rows


class Collection(Protocol):
    """What a target gives the loop: its collection or table, created or checked for the index's dim.
    `where` filters are `id < N` / `id >= N`, which every engine here parses the same way."""

    label: str  # "milvus collection 'photos' at photos.db", for messages
    max_path_bytes: int | None  # VARCHAR limits (UTF-8 bytes), None where strings are unbounded
    max_caption_bytes: int | None

    def count(self, where: str = "") -> int: ...
    def delete(self, where: str) -> None: ...
    def write(self, batch: Batch) -> None: ...
    def embeddings(self, ids: list[int]) -> np.ndarray: ...  # (len(ids), d) float32, in the order asked
    def finish(self) -> None: ...  # make every write durable (Milvus: flush)


def complete_prefix(table: Collection, present: int) -> int:
    """The largest p with ids 0..p-1 all present: count(id < p) == p (monotone in p; ids are unique
    because the loop never writes one twice). `present` is the table's row count, an upper bound."""
    if present == 0 or table.count(f"id < {present}") == present:
        return present
    lo, hi = 0, present  # count(id < lo) == lo, count(id < hi) < hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if table.count(f"id < {mid}") == mid:
            lo = mid
        else:
            hi = mid
    return lo


def resume_point(table: Collection, index: Path, rows: np.ndarray) -> tuple[int, int]:
    """(the row to go on from, how many rows past it were deleted); an error when the table holds rows
    that are not this index's."""
    n = len(rows)
    present = table.count()
    beyond = table.count(f"id >= {n}") if present else 0
    if beyond:
        raise ValueError(
            f"{table.label} holds {beyond} rows with ids past the {n} rows of {index}: another index's export; "
            "pick another --collection/--table or drop it"
        )
    start = complete_prefix(table, present)
    if start:
        ids = sorted({0, start - 1})
        theirs, ours = table.embeddings(ids), np.asarray(rows[ids], dtype=np.float32)
        if theirs.shape != ours.shape or not np.allclose(theirs, ours, atol=1e-6):
            raise ValueError(
                f"{table.label} holds other rows than {index} (row {ids[-1]} or 0 differs): another index's "
                "export, or the index was rebuilt; pick another --collection/--table or drop it"
            )
    stray = present - start
    if stray:
        table.delete(f"id >= {start}")
    return start, stray


def fit_strings(batch: Batch, table: Collection, index: Path) -> int:
    """Checks the batch's strings against the table's VARCHAR limits: a path over its limit is an error
    naming the row (a cut path names no file); a caption over it is cut at a character boundary and
    counted. Returns how many captions were cut."""
    cut = 0
    if table.max_path_bytes is not None:
        for row, path in zip(batch.ids, batch.paths):
            size = len(path.encode("utf-8"))
            if size > table.max_path_bytes:
                raise ValueError(
                    f"{index}: row {row}'s path is {size} bytes, over the {table.max_path_bytes} bytes of "
                    f"{table.label}'s path field: {path[:80]}..."
                )
    if table.max_caption_bytes is not None:
        limit = table.max_caption_bytes
        for i, caption in enumerate(batch.captions):
            raw = caption.encode("utf-8")
            if len(raw) > limit:
                batch.captions[i] = raw[:limit].decode("utf-8", "ignore")
                cut += 1
    return cut


def export_rows(index: str | Path, table_for: Callable[[int], Collection], opts: Options, target: str) -> dict:
    """Streams the index into `table_for(dim)` (the target's created or checked collection), resuming
    where a previous run stopped; the report `siglip export` prints."""
    t0 = time.perf_counter()
    index = Path(index)
    gen = open_rows(index)
    n, dim = gen.count, int(gen.rows.shape[1])
    table = table_for(dim)
    start, stray = resume_point(table, index, gen.rows)
    cut = 0
    bar = tqdm(total=n, initial=start, unit="row", desc=f"{target} {opts.name}", disable=not opts.progress)
    for batch in iter_batches(gen, opts.batch_rows, start=start):
        cut += fit_strings(batch, table, index)
        table.write(batch)
        bar.update(len(batch))
    bar.close()
    table.finish()
    count = table.count()
    if count != n:
        raise RuntimeError(f"{table.label} holds {count} rows after the export, the index {n}: written to meanwhile?")
    return {
        "target": target, "uri": opts.dest, "name": opts.name, "rows": n, "dim": dim,
        "resumed_from": start, "written": n - start, "stray_rows_deleted": stray,
        "captions_cut": cut, "seconds": round(time.perf_counter() - t0, 2),
    }  # fmt: skip
