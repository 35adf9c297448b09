"""The indexes a server holds: the one place the service touches `siglip.index`.

Each `--index NAME=PATH` is opened once at start with `siglip.index.open` (meta.json read, the
model's fingerprint checked, the approximate index that `siglip index` built loaded if there is a
usable one). Search goes through it: approximate candidates re-ranked with the exact rows when
there is an approximate index, else the exact chunked scan through the page cache (the process
never holds the whole index); a request can ask for the exact scan. Items come from items.jsonl by
byte offset.

An index may change while served (`siglip embed` appends, or rewrites it with --overwrite; `siglip
index` builds its approximate index). A route takes one `IndexView` per request (`ServedIndex.view`):
one generation, whose rows, items and approximate index all agree, held open until the request is
done even if a writer deletes its files meanwhile. The next request sees the newest generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import siglip.index
from siglip.index import read_meta
from siglip.index.clip_import import check_query_model, resolve
from siglip.index.generation import Generation
from siglip.serve.images import ShardMembers


@dataclass(frozen=True)
class IndexView:
    """One served index at one generation: what a request reads, all of it from `gen`."""

    served: ServedIndex
    gen: Generation

    @property
    def name(self) -> str:
        return self.served.name

    @property
    def kind(self) -> str:
        """ "image" or "text": what the rows embed."""
        return self.gen.meta.get("kind", "image")

    @property
    def count(self) -> int:
        return self.gen.count

    @property
    def tag(self) -> str:
        """The generation's name in thumbnail URLs ("G-hash")."""
        return self.gen.tag

    @property
    def ann(self) -> dict | None:
        """This generation's approximate index (its ann.json), or None: exact search."""
        loaded = self.gen.approximate()
        return None if loaded is None else loaded[2]

    def search(
        self, queries: Tensor, k: int, exact: bool = False, max_candidates: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Top-k of (q, d) float32 unit rows: (q, k') exact cosines (descending) and (q, k') row ids,
        k' = min(k, count); candidates (at most `max_candidates`, at least k) from the approximate
        index unless `exact` or there is none."""
        if self.count == 0:
            return torch.zeros(len(queries), 0), torch.zeros(len(queries), 0, dtype=torch.long)
        cos, rows = self.gen.search(queries, k, exact=exact, max_candidates=max_candidates)
        return torch.from_numpy(cos), torch.from_numpy(rows)

    def items(self, rows: list[int]) -> list[dict]:
        """items.jsonl objects of `rows` ({"path", "caption"?} / {"shard", "key"} / {"text"}, with "id")."""
        return self.gen.items(rows)

    def vectors(self, rows: list[int]) -> Tensor:
        """(len(rows), d) float32 stored rows (memory-mapped read of just those rows)."""
        return torch.from_numpy(np.asarray(self.gen.rows[rows], dtype=np.float32))

    def image_source(self, row: int) -> Path | bytes | None:
        """Where item `row`'s image is: its file, or its bytes read from its shard; None for a text item.
        OSError / KeyError when its shard, or its member, is gone."""
        item = self.items([row])[0]
        if "path" in item:
            return Path(item["path"])
        if "shard" in item:
            return self.served.shards.read(item["shard"], item["key"])
        return None


@dataclass
class ServedIndex:
    """One index: `name` (as clients select it), `path`, read-only; `view()` for its newest generation.
    The other attributes answer from the newest generation too (one call each)."""

    name: str
    path: Path
    handle: siglip.index.Index
    shards: ShardMembers = field(default_factory=ShardMembers, repr=False)

    def view(self) -> IndexView:
        """The newest committed generation, to answer one request from."""
        return IndexView(self, self.handle.current())

    @property
    def meta(self) -> dict:
        return self.handle.meta

    @property
    def kind(self) -> str:
        return self.view().kind

    @property
    def count(self) -> int:
        return self.handle.count

    @property
    def dim(self) -> int:
        return self.handle.dim

    @property
    def ann(self) -> dict | None:
        """The approximate index in use (kind, parameters, measured recall), or None: exact search."""
        return self.handle.ann

    def search(
        self, queries: Tensor, k: int, exact: bool = False, max_candidates: int | None = None
    ) -> tuple[Tensor, Tensor]:
        return self.view().search(queries, k, exact, max_candidates)

    def items(self, rows: list[int]) -> list[dict]:
        return self.view().items(rows)

    def vectors(self, rows: list[int]) -> Tensor:
        return self.view().vectors(rows)

    def image_source(self, row: int) -> Path | bytes | None:
        return self.view().image_source(row)


def parse_index_flag(value: str) -> tuple[str, Path]:
    """`NAME=PATH` (or a bare PATH, named after its folder) -> (name, path)."""
    name, sep, path = value.partition("=")
    if not sep:
        name, path = Path(value).name.removesuffix(".index") or "index", value
    if not name or not path:
        raise ValueError(f"--index {value!r}: expected NAME=PATH (e.g. photos=photos.index)")
    return name, Path(path)


def open_indexes(flags: list[str], fingerprint: str, model_path: str, dim: int | None = None) -> dict[str, ServedIndex]:
    """Open every `--index` flag; refuse a missing index, a repeated name, or one built with other
    weights than `fingerprint` (naming the index). A clip-retrieval folder is served from its
    imported index (`siglip.index.clip_import`), whose rows must have the model's `dim`."""
    out: dict[str, ServedIndex] = {}
    for flag in flags:
        name, path = parse_index_flag(flag)
        if name in out:
            raise ValueError(f"--index {flag}: the name {name!r} is given twice")
        path = resolve(path)
        meta = read_meta(path)
        if meta is None:
            raise FileNotFoundError(f"--index {flag}: no meta.json in {path}; not an index written by siglip embed")
        check_query_model(meta, fingerprint, dim, f"--index {name}={path}", f"--model {model_path}")
        handle = siglip.index.open(path)
        handle.approximate()  # load (or refuse, with a warning naming it) the approximate index now
        out[name] = ServedIndex(name, path, handle)
    return out
