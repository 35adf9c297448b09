"""`siglip export INDEX --to milvus --uri URI --collection NAME`: the rows into a Milvus collection
through pymilvus's `MilvusClient`. URI is a Milvus Lite folder (`photos.db`, run inside this process by
the `milvus-lite` package) or a server (`http://host:19530`); the same client speaks to both.

The collection: `id` INT64 primary key (not auto-id), `embedding` FLOAT_VECTOR of the index's dim with
a FLAT index and metric IP (exact search; inner product of unit rows is the cosine), `path` VARCHAR(4096)
and `caption` VARCHAR(65535), Strong consistency. A path longer than 4096 bytes is an error naming its
row; a longer caption is cut and counted. An existing collection is checked field by field (another
dim is an error naming it and both dims) and resumed (see `siglip.export.database`).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from siglip.export import Options
from siglip.export.database import export_rows
from siglip.export.rows import Batch

PATH_BYTES, CAPTION_BYTES = 4096, 65535  # 65535 is Milvus's largest VARCHAR
CALL_BYTES = 32 << 20  # one insert call's vectors at most (a server refuses messages past 64 MiB)
INSTALL = "pip install 'siglip[milvus]'"


def client_for(uri: str):
    """A `MilvusClient` for URI; a clear error naming the extra when pymilvus (or milvus-lite, for a
    local .db) is missing."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise ModuleNotFoundError(f"--to milvus needs pymilvus: {INSTALL}") from None
    local = not uri.startswith(("http://", "https://", "tcp://", "unix:", "grpc://"))
    if local:
        if not uri.endswith(".db"):
            raise ValueError(f"--uri {uri}: a Milvus Lite database is a name ending in .db, or give a server URL")
        if importlib.util.find_spec("milvus_lite") is None:
            raise ModuleNotFoundError(f"--uri {uri}: a local Milvus Lite database needs milvus-lite: {INSTALL}")
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        for name in ("milvus_lite", "faiss.loader"):  # runs in this process; its INFO lines are noise here
            logging.getLogger(name).setLevel(logging.WARNING)
    return MilvusClient(uri=uri)


class MilvusCollection:
    """A collection in the export schema, created or checked (see the module docstring)."""

    def __init__(self, client, name: str, dim: int, uri: str):
        self.client, self.name, self.dim = client, name, dim
        self.label = f"milvus collection '{name}' at {uri}"
        self.max_path_bytes, self.max_caption_bytes = PATH_BYTES, CAPTION_BYTES
        if client.has_collection(name):
            self._check()
        else:
            self._create()
        client.load_collection(name)  # a collection reopened (Milvus Lite) is released: no queries

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("path", DataType.VARCHAR, max_length=PATH_BYTES)
        schema.add_field("caption", DataType.VARCHAR, max_length=CAPTION_BYTES)
        self.client.create_collection(self.name, schema=schema, consistency_level="Strong")
        self._index()

    def _index(self) -> None:
        """FLAT, metric IP: exact search. sync=False: waiting for the index asks the server for a
        timestamp, which Milvus Lite does not implement (a traceback in the log); FLAT is ready at once."""
        index = self.client.prepare_index_params()
        index.add_index(field_name="embedding", index_type="FLAT", metric_type="IP")
        self.client.create_index(self.name, index, sync=False)

    def _check(self) -> None:
        """The existing collection's fields against the export schema; its VARCHAR limits are kept."""
        from pymilvus import DataType

        fields = {f["name"]: f for f in self.client.describe_collection(self.name)["fields"]}
        want = {"id": DataType.INT64, "embedding": DataType.FLOAT_VECTOR, "path": DataType.VARCHAR}
        want["caption"] = DataType.VARCHAR
        for key, kind in want.items():
            have = fields.get(key, {}).get("type")
            if have != kind:
                raise ValueError(
                    f"{self.label} is not in the export schema: field '{key}' is {getattr(have, 'name', 'missing')}, "
                    f"expected {kind.name}; pick another --collection or drop it"
                )
        if not fields["id"].get("is_primary"):
            raise ValueError(f"{self.label}: field 'id' is not its primary key; pick another --collection")
        dim = int(fields["embedding"]["params"]["dim"])
        if dim != self.dim:
            raise ValueError(
                f"{self.label} has embedding dim {dim}, the index has {self.dim}: pick another --collection or drop it"
            )
        indexes = self.client.list_indexes(self.name, field_name="embedding")
        if not indexes:
            self._index()
        elif (metric := self.client.describe_index(self.name, indexes[0]).get("metric_type")) not in ("IP", "COSINE"):
            raise ValueError(f"{self.label}: its embedding index's metric is {metric}, not IP (or COSINE)")
        self.max_path_bytes = int(fields["path"]["params"]["max_length"])
        self.max_caption_bytes = int(fields["caption"]["params"]["max_length"])

    def count(self, where: str = "") -> int:
        res = self.client.query(self.name, filter=where, output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def delete(self, where: str) -> None:
        self.client.delete(self.name, filter=where)

    def write(self, batch: Batch) -> None:
        """Inserts, split so that one call carries at most CALL_BYTES of vectors."""
        step = max(1, CALL_BYTES // (4 * self.dim))
        for s in range(0, len(batch), step):
            rows = [
                {"id": int(i), "embedding": e, "path": p, "caption": c}
                for i, e, p, c in zip(
                    batch.ids[s : s + step], batch.embeddings[s : s + step], batch.paths[s : s + step],
                    batch.captions[s : s + step],
                )
            ]  # fmt: skip
            self.client.insert(self.name, rows)

    def embeddings(self, ids: list[int]) -> np.ndarray:
        got = {int(r["id"]): r["embedding"] for r in self.client.get(self.name, ids=ids, output_fields=["embedding"])}
        if len(got) != len(ids):
            return np.zeros((0, self.dim), np.float32)
        return np.asarray([got[i] for i in ids], dtype=np.float32)

    def finish(self) -> None:
        self.client.flush(self.name)


def export(index: str | Path, opts: Options) -> dict:
    """The index's rows into the collection `opts.name` at `opts.dest` (see the module docstring)."""
    client = client_for(opts.dest)
    try:
        return export_rows(index, lambda dim: MilvusCollection(client, opts.name, dim, opts.dest), opts, "milvus")
    finally:
        client.close()
