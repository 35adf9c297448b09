"""A clip-retrieval folder searched as an index: `siglip search`, `siglip index` and `siglip serve --index`
take the folder (or its img_emb/ or text_emb/) and use a siglip index beside it, imported once.

    siglip search laion_emb/ "a dog on a beach" --model siglip_b16.pt     # imports laion_emb/img_emb first
    siglip index laion_emb/                                               # the approximate index, in the sidecar

`resolve(path)` returns an index folder: `path` itself when it holds meta.json, else for a
clip-retrieval folder its sidecar DIR/siglip-img_emb.index/ (siglip-text_emb.index/ for the text
rows), imported first when missing or when the folder's part files changed since (their names,
sizes and mtimes are kept in meta.json's "origin"; a change is a new generation, and the approximate
index, if built, is stale until `siglip index DIR` runs again).

The import copies: the rows (float16 as clip-retrieval writes them, float32 when a part is), part by
part in blocks, then the items (image_path as the path, `shard::key` back as {shard, key}; caption;
"id": metadata_<i>.parquet::row) by parquet batch, so memory holds one block whatever the size. Disk:
the sidecar is as large as the folder's rows plus its paths and captions; the folder is not changed
beside it. Rows that are not unit length are normalised as they are copied (counted in "origin").
Why a copy and not the parts read in place: the exact scan, the approximate index, the following of
generations and the server then run on an index like any other, and the folder may be on slower or
read-only storage (then give a writable copy). A kill during the import commits nothing; the next
run imports again. One import at a time per sidecar (a lock file); others wait and find it done.

A clip-retrieval folder names no model: the query model is given (--model), and only its dimension
can be checked against the rows (`check_query_model`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from siglip.index.clip_folder import Folder, listing, locate, scan
from siglip.index.store import FORMAT, VERSION, check_model, read_meta, remove_quietly, write_meta

log = logging.getLogger(__name__)
ORIGIN = "clip-retrieval"
NO_MODEL = "none (rows imported from a clip-retrieval folder; give --model)"
BLOCK_ROWS = 1 << 14  # rows copied at a time: 24 MiB of float16 at d = 768, ~4x that while checked
UNIT_TOL = 1e-2  # |norm - 1| above this: the row is normalised (float16 unit rows are within ~1e-3)


def is_imported(meta: dict) -> bool:
    """True for the meta.json of an index imported from a clip-retrieval folder (it has no model)."""
    return isinstance(meta.get("origin"), dict) and meta["origin"].get("format") == ORIGIN


def resolve(path: str | Path, progress: bool = True) -> Path:
    """The index folder to open for `path`: itself, or a clip-retrieval folder's sidecar, imported
    (or brought up to date) first. A path that is neither is returned as given."""
    path = Path(path)
    found = None if (path / "meta.json").is_file() else locate(path)
    if found is None:
        return path
    out = found[0] / f"siglip-{found[1]}.index"
    if _current(out, found[0], listing(*found)) is not None:
        return out  # up to date: no part opened
    folder = scan(*found)
    try:
        out.mkdir(exist_ok=True)
    except OSError as e:
        raise ValueError(f"{out}: cannot write the index of {folder.root / folder.emb} here ({e}); "
                         "copy the folder somewhere writable") from None  # fmt: skip
    with _lock(out):
        if _current(out, folder.root, folder.files()) is None:
            import_folder(folder, out, progress)
    return out


def _current(out: Path, root: Path, files: list | None) -> dict | None:
    """The sidecar's meta.json when it was imported from exactly these part `files`; None when it must
    be (re)imported. A sidecar that is not an import (someone embedded into it) is an error."""
    meta = read_meta(out)
    if meta is None or files is None:
        return None
    if not is_imported(meta):
        raise ValueError(f"{out}: an index not imported from {root}; move it away to import the folder")
    return meta if meta["origin"].get("files") == files else None


@contextmanager
def _lock(out: Path):
    with open(out / ".import.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def check_query_model(meta: dict, fingerprint: str, dim: int | None, where: str | Path, what: str) -> None:
    """`check_model` for an index with a model; for imported rows (no model), the dimensions must agree."""
    if not is_imported(meta):
        check_model(meta, fingerprint, where, what)
    elif dim is None or int(meta["dim"]) != int(dim):
        raise ValueError(
            f"{meta['origin']['folder']}: its rows have dim {meta['dim']}, {what} embeds dim {dim}: "
            "give the model that wrote the folder (or one of its dimension)"
        )


# --------------------------------------------------------------------------------------------------
# the import


def import_folder(folder: Folder, out: Path, progress: bool = True) -> dict:
    """Copy `folder`'s rows and items into generation G+1 of the index at `out`, then commit meta.json."""
    old = read_meta(out)
    gen = int(old.get("generation", 0)) + 1 if old else 1
    names = {
        "embeddings": f"embeddings-{gen}.npy",
        "items": f"items-{gen}.jsonl",
        "offsets": f"items-{gen}.offsets.npy",
    }
    size = folder.count * folder.dim * folder.dtype.itemsize
    log.info(
        "importing %s (%d rows x %d, %d parts) into %s: %.2f GiB of rows copied",
        folder.root / folder.emb, folder.count, folder.dim, len(folder.parts), out, size / 2**30,
    )  # fmt: skip
    bar = tqdm(total=2 * folder.count, desc="import rows + items", unit="row", disable=not progress)
    normalised = _copy_rows(folder, out / names["embeddings"], bar)
    _copy_items(folder, out, names, bar)
    bar.close()
    origin = {"format": ORIGIN, "folder": str(folder.root.resolve()), "embeddings": folder.emb,
              "files": folder.files(), "normalised": normalised}  # fmt: skip
    meta = {
        "format": FORMAT, "version": VERSION, "kind": folder.kind, "model": NO_MODEL, "fingerprint": None,
        "dim": folder.dim, "dtype": folder.dtype.name, "count": folder.count, "generation": gen, "skipped": [],
        **names, "uid": secrets.token_hex(8), "source": str((folder.root / folder.emb).resolve()), "origin": origin,
    }  # fmt: skip
    write_meta(out, meta)  # the commit
    for k in names:
        if old and old.get(k) and old[k] != names[k]:
            remove_quietly(out / old[k])
    if normalised:
        log.warning("%s: %d rows were not unit length; normalised in the copy", folder.root / folder.emb, normalised)
    return meta


def _write_npy_header(f, shape: tuple, dtype: np.dtype) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(f, header)


def _copy_rows(folder: Folder, dest: Path, bar: tqdm) -> int:
    """Every part's rows, in order, into one (count, dim) .npy, a block at a time; returns how many
    rows were normalised."""
    normalised, d = 0, folder.dim
    with open(dest, "wb") as out:
        _write_npy_header(out, (folder.count, d), folder.dtype)
        for part in folder.parts:
            offset, (n, _), dtype = part.layout
            with open(part.npy, "rb") as f:
                f.seek(offset)
                for s in range(0, n, BLOCK_ROWS):
                    m = min(BLOCK_ROWS, n - s)
                    block = np.fromfile(f, dtype=dtype, count=m * d).reshape(-1, d)
                    if len(block) != m:
                        raise ValueError(f"{part.npy}: truncated at row {s + len(block)} (its header says {n})")
                    norms = np.linalg.norm(block.astype(np.float32), axis=1)
                    off = (np.abs(norms - 1) > UNIT_TOL) & (norms > 0)
                    if off.any():
                        block = block.astype(np.float32)
                        block[off] /= norms[off, None]
                        normalised += int(off.sum())
                    out.write(np.ascontiguousarray(block, dtype=folder.dtype).tobytes())
                    bar.update(m)
        out.flush()
        os.fsync(out.fileno())
    return normalised


def _item(path, caption, kind: str, rid: str) -> dict:
    """One items.jsonl object from a metadata row (see siglip.index.store for the kinds)."""
    caption = "" if caption is None else str(caption)
    if kind == "text":
        return {"text": caption, "id": rid}
    path = "" if path is None else str(path)
    shard, sep, key = path.partition("::")
    item = {"shard": shard, "key": key} if sep and shard.endswith(".tar") else {"path": path}
    return item | ({"caption": caption} if caption else {}) | {"id": rid}


def _copy_items(folder: Folder, out: Path, names: dict, bar: tqdm) -> None:
    """items-G.jsonl from the metadata parts, batch by batch, and its offsets (streamed too)."""
    import pyarrow.parquet as pq

    with open(out / names["items"], "wb") as items, open(out / names["offsets"], "wb") as offsets:
        _write_npy_header(offsets, (folder.count,), np.dtype(np.int64))
        pos = 0
        for part in folder.parts:
            pf = pq.ParquetFile(part.parquet)
            columns = [c for c in ("image_path", "caption") if c in pf.schema_arrow.names]
            row = 0
            for batch in pf.iter_batches(batch_size=BLOCK_ROWS, columns=columns):
                cols = batch.to_pydict()
                paths = cols.get("image_path", [None] * batch.num_rows)
                caps = cols.get("caption", [None] * batch.num_rows)
                lines = [
                    (json.dumps(_item(p, c, folder.kind, f"{part.parquet.name}::{row + i}")) + "\n").encode()
                    for i, (p, c) in enumerate(zip(paths, caps))
                ]
                ends = pos + np.cumsum([len(x) for x in lines], dtype=np.int64)  # (m,) where each line ends
                offsets.write(np.concatenate([[pos], ends[:-1]]).astype(np.int64)[: len(lines)].tobytes())
                pos = int(ends[-1]) if lines else pos
                items.write(b"".join(lines))
                row += batch.num_rows
                bar.update(batch.num_rows)
        for f in (items, offsets):
            f.flush()
            os.fsync(f.fileno())
