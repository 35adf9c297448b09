"""An index's rows handed to the engines users scale search with: clip-retrieval's embedding folders
and vector databases, each written through its own library.

`rows.py` reads an index as batches of one schema, the same for every target: `id` (int64, the row in
the index), `embedding` (float32, unit rows), `path` (the image path, `shard::key`, or "" for a text
index) and `caption` (the caption or the text, "" when unknown). A target is a module here with
`export(index, opts) -> dict` (what it wrote, for `--json`); `TARGETS` names them for `siglip export`.
"""

from __future__ import annotations

from dataclasses import dataclass

# --to NAME -> (module, one line for --help); each module is imported only when it runs
TARGETS: dict[str, tuple[str, str]] = {
    "clip-retrieval": ("siglip.export.clip_retrieval", "img_emb/ + metadata/ parts (autofaiss, clip-back)"),
    "milvus": (
        "siglip.export.milvus",
        "a Milvus collection: --uri x.db (Milvus Lite) or http://host:19530 (extra: milvus)",
    ),
    "lancedb": ("siglip.export.lancedb", "a LanceDB table: --uri DIR --table NAME (extra: lancedb)"),
}


@dataclass
class Options:
    """What `siglip export` was asked: `dest` is the folder (clip-retrieval) or the engine's URI,
    `name` the collection or table; rows go `batch_rows` at a time; a clip-retrieval folder is
    split into files of `part_rows` rows."""

    dest: str
    name: str = "siglip"
    batch_rows: int = 8192
    part_rows: int = 1_000_000
    progress: bool = True
