"""Keep the approximate index in step when `siglip embed` appends rows to an index.

A run of `siglip embed` only ever appends (the old rows are copied first, unchanged, into the next
generation), so the approximate index of the old generation takes the new rows with its trained
centroids and codebooks: they are added in chunks, and ann-G.faiss + ann.json are written for the
new generation. When that cannot be done (faiss is not installed, the file is damaged, it covered
other rows), nothing is changed: ann.json then describes an older generation, which `siglip search`
and `siglip.index.open` see as stale (a warning, and exact search until `siglip index` runs again).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from siglip.index import ann
from siglip.index.ann_build import CHUNK_ROWS, commit
from siglip.index.handle import read_ann_json, rows_fingerprint

log = logging.getLogger(__name__)


def follow_append(index: str | Path, old_meta: dict | None, new_meta: dict) -> str:
    """After `siglip embed` committed `new_meta` over `old_meta`: add the new rows to the approximate
    index. Returns what happened: "none" (no approximate index), "same" (nothing appended),
    "updated" or "stale" (with a warning that says why and what to run)."""
    index = Path(index)
    try:
        desc = read_ann_json(index)
    except ValueError as e:
        log.warning("%s: the approximate index is not used until `siglip index %s` rebuilds it", e, index)
        return "stale"
    if desc is None:
        return "none"
    if old_meta is None or old_meta.get("generation") == new_meta.get("generation"):
        return "same"
    rows = np.load(index / new_meta["embeddings"], mmap_mode="r")
    old_count = int(old_meta["count"])
    try:
        if desc.get("generation") != old_meta.get("generation") or desc.get("rows") != old_count:
            raise ValueError(f"{index / 'ann.json'} was already stale (generation {desc.get('generation')})")
        if rows_fingerprint(rows[:old_count], old_meta) != desc.get("rows_fingerprint"):
            raise ValueError(f"{index / 'ann.json'} covers other rows than this index's")
        fi = ann.read(index / desc["file"], desc.get("crc32"))
    except (ValueError, ModuleNotFoundError) as e:
        log.warning(
            "%s: the approximate index is stale (%d rows appended); run `siglip index %s` to rebuild it",
            e, len(rows) - old_count, index,
        )  # fmt: skip
        return "stale"
    for s in range(old_count, len(rows), CHUNK_ROWS):
        ann.add(fi, np.asarray(rows[s : s + CHUNK_ROWS], dtype=np.float32))
    desc = commit(index, new_meta, rows, fi, desc)
    log.info(
        "%s: %d new rows added to the approximate index (recall was measured at %d rows)",
        index, len(rows) - old_count, desc.get("measured_at_rows", old_count),
    )  # fmt: skip
    if desc["memory_bytes"] > desc.get("max_memory", float("inf")):
        log.warning("%s: the approximate index now exceeds its --max-memory; run `siglip index` again", index)
    return "updated"
