"""Embedding indexes on disk and exact search over them (what `siglip embed` / `siglip search` run):
the items of a folder, manifest, webdataset shards or text file, each with a stable key
(`sources.py`); the on-disk layout, written part by part and committed atomically (`store.py`);
embedding the items an index lacks, resumable, incremental and split over torchrun processes
(`build.py`); exact chunked top-k that never holds the whole index in memory (`search.py`).
"""

from siglip.index.search import topk_file, topk_rows
from siglip.index.store import check_model, read_items, read_meta

__all__ = ["check_model", "read_items", "read_meta", "topk_file", "topk_rows"]
