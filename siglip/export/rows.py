"""An index read as batches of the export schema (see `siglip.export`), streaming: one generation,
pinned at the start, `batch_rows` rows at a time from the memory-mapped embeddings and the items file
read in order, so memory holds one batch whatever the index's size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from siglip.index.generation import Generation, open_generation


@dataclass
class Batch:
    """Rows `ids[0]` .. `ids[-1]` of an index: ids (n,) int64, embeddings (n, d) float32 (or as stored),
    paths and captions (n strings each, "" where the index has none)."""

    ids: np.ndarray
    embeddings: np.ndarray
    paths: list[str]
    captions: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def item_path(item: dict) -> str:
    """The export's `path` of an items.jsonl object: the file, `shard::key` for a shard's sample, ""
    for a text."""
    if "path" in item:
        return str(item["path"])
    if "shard" in item:
        return f"{item['shard']}::{item['key']}"
    return ""


def item_caption(item: dict) -> str:
    """The export's `caption`: the item's caption, or its text in a text index; "" when unknown."""
    value = item.get("caption", item.get("text", ""))
    return "" if value is None else str(value)


def open_rows(index: str | Path) -> Generation:
    """The index's current generation, held open for a whole export (a commit during it changes nothing)."""
    return open_generation(Path(index))


def iter_batches(
    gen: Generation, batch_rows: int = 8192, start: int = 0, dtype: np.dtype | None = np.float32
) -> Iterator[Batch]:
    """Batches of `batch_rows` rows from row `start` to the end, in row order; embeddings in `dtype`
    (None: as stored, float16 or float32, no conversion)."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, not {batch_rows}")
    count = gen.count
    if not 0 <= start <= count:
        raise ValueError(f"{gen.path}: start row {start} is outside 0..{count}")
    lines = _lines_from(gen, start)
    try:
        for first in range(start, count, batch_rows):
            last = min(first + batch_rows, count)
            items = [_parse(next(lines, None), gen, r) for r in range(first, last)]
            yield Batch(
                ids=np.arange(first, last, dtype=np.int64),
                embeddings=gen.read_rows(first, last).astype(dtype or gen.rows.dtype, copy=False),  # read, not mapped
                paths=[item_path(it) for it in items],
                captions=[item_caption(it) for it in items],
            )
    finally:
        lines.close()


def _lines_from(gen: Generation, start: int) -> Iterator[str]:
    """The items file's lines from row `start`, read from the generation's own open file (a commit
    that deletes the name changes nothing), or "{}" forever when the index keeps no items."""
    if gen.items_file is None:
        while True:
            yield "{}"
    with os.fdopen(os.dup(gen.items_file.fileno()), "r", encoding="utf-8") as f:
        if start and len(gen.offsets) > start:
            f.seek(int(gen.offsets[start]))
        else:
            f.seek(0)
            for _ in range(start):
                f.readline()
        yield from f


def _parse(line: str | None, gen: Generation, row: int) -> dict:
    if line is None:
        raise ValueError(f"{gen.path / gen.meta['items']}: ends before row {row} of {gen.count}")
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{gen.path / gen.meta['items']}: line {row + 1} is not JSON ({e})") from None
    if not isinstance(item, dict):
        raise ValueError(f"{gen.path / gen.meta['items']}: line {row + 1} is not an object")
    return item
