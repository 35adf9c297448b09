"""Embedding indexes on disk and exact search over them (what `siglip embed` / `siglip search` run):
the items of a folder, manifest, webdataset shards or text file, each with a stable key
(`sources.py`); the on-disk layout, written part by part and committed atomically (`store.py`);
embedding the items an index lacks, resumable, incremental and split over torchrun processes
(`build.py`); exact chunked top-k that never holds the whole index in memory (`search.py`); `open(path)`, an index
as one object that searches through its approximate index when it has one (`handle.py`); that
approximate index: the plan under a memory budget (`ann_plan.py`), faiss and nothing else (`ann.py`),
building it in chunks (`ann_build.py`), following appends (`ann_update.py`), measured recall (`recall.py`);
clip-retrieval's embedding folders read and checked (`clip_folder.py`) and taken as an index, imported
beside the folder (`clip_import.py`).
"""

from siglip.index.handle import Index, open
from siglip.index.search import topk_file, topk_rows
from siglip.index.store import check_model, read_items, read_meta

__all__ = ["Index", "open", "check_model", "read_items", "read_meta", "topk_file", "topk_rows"]
