"""`siglip export INDEX --to lancedb --uri DIR --table NAME`: the rows into a LanceDB table through the
`lancedb` client. DIR is a local folder (or any URI `lancedb.connect` takes, e.g. `s3://bucket/path`).

The table's Arrow schema: `id` int64 (not null), `embedding` fixed_size_list<float32>[dim], `path` and
`caption` string (unbounded: nothing is cut). No vector index is built, so LanceDB's search is exact;
the query in docs/search-at-scale.md uses distance type "dot" (its distance is 1 - the inner product,
the cosine on unit rows). Each batch is one append (one table version), so a kill loses at most the
batch being written. An existing table is checked (another dim is an error naming it and both dims)
and resumed (see `siglip.export.database`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from siglip.export import Options
from siglip.export.database import export_rows
from siglip.export.rows import Batch

INSTALL = "pip install 'siglip[lancedb]'"


def arrow_schema(dim: int):
    import pyarrow as pa

    return pa.schema([
        pa.field("id", pa.int64(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim)),
        pa.field("path", pa.string()),
        pa.field("caption", pa.string()),
    ])  # fmt: skip


def connect(uri: str):
    try:
        import lancedb
    except ImportError:
        raise ModuleNotFoundError(f"--to lancedb needs lancedb: {INSTALL}") from None
    return lancedb.connect(uri)


class LanceTable:
    """A table in the export schema, created or checked (see the module docstring)."""

    max_path_bytes = max_caption_bytes = None

    def __init__(self, db, name: str, dim: int, uri: str):
        self.name, self.dim, self.schema = name, dim, arrow_schema(dim)
        self.label = f"lancedb table '{name}' at {uri}"
        try:
            self.table = db.open_table(name)
        except ValueError as e:
            if "not found" not in str(e):
                raise
            self.table = db.create_table(name, schema=self.schema)
        self._check()

    def _check(self) -> None:
        import pyarrow as pa

        have = self.table.schema
        emb = have.field("embedding").type if "embedding" in have.names else None
        if emb is not None and pa.types.is_fixed_size_list(emb) and emb.list_size != self.dim:
            raise ValueError(
                f"{self.label} has embedding dim {emb.list_size}, the index has {self.dim}: "
                "pick another --table or drop it"
            )
        for field in self.schema:
            if field.name not in have.names or have.field(field.name).type != field.type:
                theirs = have.field(field.name).type if field.name in have.names else "missing"
                raise ValueError(
                    f"{self.label} is not in the export schema: field '{field.name}' is {theirs}, "
                    f"expected {field.type}; pick another --table or drop it"
                )

    def count(self, where: str = "") -> int:
        return int(self.table.count_rows(where or None))

    def delete(self, where: str) -> None:
        self.table.delete(where)

    def write(self, batch: Batch) -> None:
        import pyarrow as pa

        flat = pa.array(batch.embeddings.reshape(-1), type=pa.float32())
        columns = [
            pa.array(batch.ids, type=pa.int64()), pa.FixedSizeListArray.from_arrays(flat, self.dim),
            pa.array(batch.paths, type=pa.string()), pa.array(batch.captions, type=pa.string()),
        ]  # fmt: skip
        self.table.add(pa.Table.from_arrays(columns, schema=self.schema))

    def embeddings(self, ids: list[int]) -> np.ndarray:
        where = f"id IN ({', '.join(str(i) for i in ids)})"
        got = self.table.search().where(where).select(["id", "embedding"]).to_arrow()
        by_id = dict(zip(got.column("id").to_pylist(), got.column("embedding").to_numpy(zero_copy_only=False)))
        if len(by_id) != len(ids):
            return np.zeros((0, self.dim), np.float32)
        return np.stack([np.asarray(by_id[i], dtype=np.float32) for i in ids])

    def finish(self) -> None:
        pass  # every append is committed when it returns


def export(index: str | Path, opts: Options) -> dict:
    """The index's rows into the table `opts.name` at `opts.dest` (see the module docstring)."""
    db = connect(opts.dest)
    return export_rows(index, lambda dim: LanceTable(db, opts.name, dim, opts.dest), opts, "lancedb")
