"""An embedding index on disk, written so that a crash at any moment loses at most the work in flight.

    INDEX/meta.json              what the index is (below); replaced atomically: the commit point
    INDEX/embeddings-G.npy       (count, dim) rows in `dtype` (float16 or float32), unit norm; np.load(mmap_mode="r")
    INDEX/items-G.jsonl          one JSON object per row, same order: {"path", "caption"?} / {"shard", "key"} / {"text"},
                             each with "id": the item's key in the source (see siglip.index.sources)
    INDEX/items-G.offsets.npy    byte offset of each items line (fetch a row's item without reading them all)
    INDEX/parts/                 work in progress: part-H.npy + part-H.json (the .json, written last, commits it)

meta.json: format, version, kind ("image" / "text"), model (path), fingerprint (of the weights), dim,
dtype, count, embeddings / items / offsets (the current files), skipped ([{key, reason, ...}]), source.

A run writes parts (one per unit of work, from any number of processes), then one process merges
them (`consolidate`) into generation G+1 and commits meta.json; the old generation and the merged
parts are deleted after the commit. A run that stops early leaves parts that the next run keeps.
`siglip embed --overwrite` marks parts/ (REPLACE): its commit is generation G+1 holding only the new
items, so a generation's number, and its files' names, are never used twice in one folder; "uid"
(random, new at every commit) tells generations apart in indexes written before that rule.

Readers (`siglip.index.generation`) open a generation's files and keep them open, so deleting them
after a commit is safe on POSIX: the name goes, the data stays until the last reader closes it
(unlink-while-open). A reader that finds a name gone reads meta.json again and opens the newer one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from siglip.checkpoint import write_atomically

FORMAT, VERSION = "siglip-index", 1
ROWS_PER_COPY = 1 << 16
REPLACE = "REPLACE"  # parts/REPLACE: the parts replace the index's items (--overwrite) instead of adding to them
log = logging.getLogger(__name__)


def atomic_write(path: Path, data: bytes) -> None:
    write_atomically(path, lambda f: f.write(data))


def atomic_npy(path: Path, array: np.ndarray) -> None:
    write_atomically(path, lambda f: np.save(f, array))


def read_meta(index: str | Path) -> dict | None:
    path = Path(index) / "meta.json"
    if not path.is_file():
        return None
    return parse_meta(path.read_bytes(), path)


def parse_meta(raw: bytes, path: Path) -> dict:
    """meta.json's bytes -> its dict; a ValueError naming `path` when it is not an index's meta.json."""
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: damaged ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a siglip index (format {meta.get('format') if isinstance(meta, dict) else meta!r})"
        )
    return meta


def write_meta(index: str | Path, meta: dict) -> None:
    atomic_write(Path(index) / "meta.json", (json.dumps(meta, indent=1) + "\n").encode())


def check_model(meta: dict, fingerprint: str, where: str | Path, what: str = "this model") -> None:
    """A clear error when an index was built with other weights than `fingerprint`'s."""
    if meta.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{where}: built with the model {meta.get('model')!r} (weights fingerprint {meta.get('fingerprint')}), "
            f"but {what} has fingerprint {fingerprint}: embeddings of different models are not comparable. "
            "Use the index's model, or embed again into a new --out (or with --overwrite)"
        )


# --------------------------------------------------------------------------------------------------
# parts: written by the embedding processes


def part_name(first_key: str) -> str:
    return "part-" + hashlib.sha1(first_key.encode()).hexdigest()[:16]


def write_part(
    index: Path, keys: list[str], records: list[dict], rows: np.ndarray, skipped: list[dict], fingerprint: str
) -> None:
    """One unit of work: its embedded rows (in item order) and the items it skipped."""
    parts = index / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    name = part_name(keys[0] if keys else skipped[0]["key"])
    atomic_npy(parts / f"{name}.npy", rows)
    body = {"fingerprint": fingerprint, "keys": keys, "records": records, "skipped": skipped}
    atomic_write(parts / f"{name}.json", json.dumps(body).encode())  # last: commits the part


def read_parts(index: Path) -> list[tuple[Path, dict]]:
    """Committed parts: (npy path, body), in file-name order."""
    folder = index / "parts"
    if not folder.is_dir():
        return []
    out = []
    for js in sorted(folder.glob("part-*.json")):
        out.append((js.with_suffix(".npy"), json.loads(js.read_text())))
    return out


def iter_items(index: Path, meta: dict) -> Iterator[dict]:
    if meta.get("items"):
        with open(index / meta["items"], encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def done_keys(index: Path, meta: dict | None) -> set[str]:
    """Keys already in the index, in committed parts, or skipped (with a reason) by an earlier run."""
    keys: set[str] = set()
    if meta is not None:
        keys.update(item["id"] for item in iter_items(index, meta))
        keys.update(s["key"] for s in meta.get("skipped", []))
    for _, body in read_parts(index):
        keys.update(body["keys"])
        keys.update(s["key"] for s in body["skipped"])
    return keys


# --------------------------------------------------------------------------------------------------
# consolidation: one process merges the parts into the next generation


def _copy_rows(src: np.ndarray, dst: np.ndarray, start: int) -> int:
    for s in range(0, len(src), ROWS_PER_COPY):
        block = src[s : s + ROWS_PER_COPY]
        dst[start + s : start + s + len(block)] = block
    return start + len(src)


def _write_rows(index: Path, name: str, old_rows: np.ndarray | None, parts: list, dtype: np.dtype, dim: int) -> int:
    """embeddings-G.npy: the old rows, then each part's, copied in blocks (never all in memory)."""
    count = (0 if old_rows is None else len(old_rows)) + sum(len(b["keys"]) for _, b in parts)
    if count == 0:
        atomic_npy(index / name, np.zeros((0, dim), dtype))
        return 0
    rows = np.lib.format.open_memmap(index / name, mode="w+", dtype=dtype, shape=(count, dim))
    at = 0 if old_rows is None else _copy_rows(old_rows, rows, 0)
    for npy, _ in parts:
        at = _copy_rows(np.load(npy, mmap_mode="r").astype(dtype, copy=False), rows, at)
    rows.flush()
    return count


def _write_items(index: Path, names: dict, old: dict | None, parts: list, count: int) -> None:
    """items-G.jsonl (old items, then each part's, with their ids) and its line offsets."""
    offsets, pos = np.zeros(count, dtype=np.int64), 0
    lines = iter_items(index, old) if old else iter(())
    new = ({**rec, "id": key} for _, body in parts for key, rec in zip(body["keys"], body["records"]))
    with open(index / names["items"], "w", encoding="utf-8") as f:
        for i, item in enumerate(itertools.chain(lines, new)):
            line = json.dumps(item) + "\n"
            offsets[i], pos = pos, pos + len(line.encode())
            f.write(line)
        f.flush()
        os.fsync(f.fileno())
    atomic_npy(index / names["offsets"], offsets)


def mark_replace(index: Path) -> None:
    """`siglip embed --overwrite`: drop unmerged parts and mark the next commit as replacing the items
    (the current generation stays readable, and served, until that commit)."""
    parts = index / "parts"
    if parts.is_dir():
        for p in parts.iterdir():
            p.unlink()
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write(parts / REPLACE, b"the next commit replaces the index's items (siglip embed --overwrite)\n")


def replacing(index: Path) -> bool:
    return (index / "parts" / REPLACE).is_file()


def remove_quietly(path: Path) -> None:
    """Delete a replaced file; readers that hold it open keep its data (POSIX). Where the system refuses
    (a file open on Windows), it stays, with a warning: a later commit does not need it."""
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        log.warning("%s: not deleted (%s); it belongs to a replaced generation and can be deleted", path, e)


def consolidate(index: Path, meta: dict, order: dict[str, int]) -> dict:
    """Merge committed parts after the current rows (new rows in `order`: key -> position in the
    source listing), commit the new meta.json, delete what it replaced. Returns the new meta.
    `meta` holds the run's model, fingerprint, dim, dtype, kind and source (an existing index keeps
    its dtype). With parts/REPLACE the new generation holds the parts' rows only."""
    current, parts, replace = read_meta(index), read_parts(index), replacing(index)
    old = None if replace else current
    if old is not None and not parts:
        return old  # nothing new: no rewrite
    for _, body in parts:
        check_model({**meta, "fingerprint": body["fingerprint"]}, meta["fingerprint"], index / "parts", "this run")
    parts.sort(key=lambda p: min((order.get(k, len(order)) for k in p[1]["keys"]), default=len(order)))
    meta = {**meta, "dtype": old["dtype"]} if old else meta
    gen = int(current.get("generation", 0)) + 1 if current else 1  # never a number (a file name) used before
    names = {
        "embeddings": f"embeddings-{gen}.npy",
        "items": f"items-{gen}.jsonl",
        "offsets": f"items-{gen}.offsets.npy",
    }
    old_rows = np.load(index / old["embeddings"], mmap_mode="r") if old else None
    count = _write_rows(index, names["embeddings"], old_rows, parts, np.dtype(meta["dtype"]), meta["dim"])
    del old_rows
    _write_items(index, names, old, parts, count)
    skipped = (old or {}).get("skipped", []) + [s for _, b in parts for s in b["skipped"]]
    new = {**(old or {}), **meta, "format": FORMAT, "version": VERSION, "generation": gen, "count": count}
    new.update(names, skipped=skipped, uid=secrets.token_hex(8))
    write_meta(index, new)  # the commit
    for k in ("embeddings", "items", "offsets"):
        if current and current.get(k) and current[k] != new[k]:
            remove_quietly(index / current[k])
    for npy, _ in parts:
        remove_quietly(npy)
        remove_quietly(npy.with_suffix(".json"))
    remove_quietly(index / "parts" / REPLACE)
    return new


def read_items(index: str | Path, meta: dict, rows: list[int]) -> list[dict]:
    """The items.jsonl objects of `rows` (any order), by byte offset: O(len(rows)) reads."""
    index = Path(index)
    offsets = np.load(index / meta["offsets"], mmap_mode="r")
    out = []
    with open(index / meta["items"], "rb") as f:
        for r in rows:
            f.seek(int(offsets[r]))
            out.append(json.loads(f.readline()))
    return out
