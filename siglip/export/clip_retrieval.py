"""`siglip export INDEX --to clip-retrieval DIR`: the index as the folder `clip-retrieval inference`
writes, which autofaiss builds indexes from and clip-back serves.

    DIR/img_emb/img_emb_<i>.npy           (n_i, d) float16 rows of an image index, in row order
    DIR/text_emb/text_emb_<i>.npy         the same for a text index (its rows embed texts, as
                                          clip-retrieval's text_emb do; no img_emb then)
    DIR/metadata/metadata_<i>.parquet     row for row: image_path (the path, or shard::key) and caption
                                          ("" when unknown) for an image index, caption (the text) for a
                                          text index; id (int64): the row in the index
    DIR/siglip-export.json                what was exported (index, generation, rows, --part-rows)

Parts hold --part-rows rows (the last fewer) and are numbered as clip-retrieval's OutputSink numbers
them (`siglip.index.clip_folder.part_suffix`). Each file is streamed batch by batch into a temporary
name and renamed when complete, the .npy first, then its metadata: a part is there whole or not at
all, and memory holds one batch. Rerunning the same export continues it: the parts already complete
are kept and the others written. An export of another index, generation or --part-rows into the
folder replaces the earlier export's parts; a folder holding anything else is refused.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from siglip.export import Options
from siglip.export.rows import iter_batches, open_rows
from siglip.index.clip_folder import EMB, part_suffix
from siglip.index.generation import Generation, rows_fingerprint
from siglip.index.search import npy_layout
from siglip.index.store import atomic_write

MANIFEST = "siglip-export.json"
DTYPE = np.dtype(np.float16)  # what clip-retrieval writes


def _manifest(gen: Generation, index: str | Path, part_rows: int) -> dict:
    m = gen.meta
    return {
        "format": "siglip-export", "target": "clip-retrieval", "index": str(Path(index).resolve()),
        "generation": m.get("generation"), "uid": m.get("uid"), "rows_fingerprint": rows_fingerprint(gen.rows, m),
        "kind": m.get("kind", "image"), "count": gen.count, "dim": gen.dim, "part_rows": part_rows,
    }  # fmt: skip


def _ours(name: str) -> bool:
    """A file an export writes: a part, its temporary file, or the manifest."""
    return name == MANIFEST or bool(
        re.fullmatch(r"\.?(img_emb|text_emb|metadata)_\d+\.(npy|parquet)(\..*\.tmp)?", name)
    )


def _sidecar(dest: Path, path: Path) -> bool:
    """A file of the index that `siglip search DEST` imports beside the parts (kept; it follows them)."""
    return re.fullmatch(r"siglip-(img_emb|text_emb)\.index", path.relative_to(dest).parts[0]) is not None


def _prepare(dest: Path, manifest: dict) -> bool:
    """Make `dest` ready; True when it holds this same export (continue it). An earlier export of
    something else is removed; a folder with other files is refused, naming one."""
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"{dest}: a file, not a folder; give the folder to write the export into")
    files = [p for p in dest.rglob("*") if p.is_file() and not _sidecar(dest, p)] if dest.is_dir() else []
    if not files:
        return False
    try:
        before = json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        before = None
    if before is None:
        raise ValueError(f"{dest}: not empty and not a siglip export (it holds {files[0]}); give a new folder")
    strange = [p for p in files if not _ours(p.name)]
    if strange:
        raise ValueError(f"{dest}: holds {strange[0]}, not written by siglip export; give a new folder")
    if before == manifest:
        return True
    for p in files:
        p.unlink()
    return False


def _complete(npy: Path, parquet: Path, rows: int, dim: int) -> bool:
    """Both files of a part there, with its row count (a part's files are renamed into place whole)."""
    if not (npy.is_file() and parquet.is_file()):
        return False
    import pyarrow.parquet as pq

    _, shape, dtype = npy_layout(npy)
    return shape == (rows, dim) and dtype == DTYPE and pq.ParquetFile(parquet).metadata.num_rows == rows


def _schema(kind: str):
    import pyarrow as pa

    text = [("caption", pa.string())] if kind == "text" else [("image_path", pa.string()), ("caption", pa.string())]
    return pa.schema([*text, ("id", pa.int64())])


def _write_part(gen: Generation, first: int, last: int, npy: Path, parquet: Path, opts: Options, bar: tqdm) -> None:
    """Rows first..last-1 into `npy` (its header, then each batch's float16 rows) and `parquet` (a row
    group per batch), both streamed under temporary names and renamed when whole: the .npy, then
    the metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = gen.meta.get("kind", "image")
    tmp = {p: p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp") for p in (npy, parquet)}
    try:
        with open(tmp[npy], "wb") as f, pq.ParquetWriter(tmp[parquet], _schema(kind)) as meta:
            shape = (last - first, gen.dim)
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False, "shape": shape}
            )
            for batch in iter_batches(gen, min(opts.batch_rows, last - first), first, dtype=None):  # float16 stays
                n = min(len(batch), last - int(batch.ids[0]))
                f.write(np.ascontiguousarray(batch.embeddings[:n], dtype=DTYPE).tobytes())
                cols = {"caption": batch.captions[:n]}
                if kind != "text":
                    cols = {"image_path": batch.paths[:n], **cols}
                meta.write_table(pa.table({**cols, "id": batch.ids[:n]}, schema=_schema(kind)))
                bar.update(n)
                if int(batch.ids[0]) + n >= last:
                    break
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp[parquet])
        os.replace(tmp[npy], npy)
        os.replace(tmp[parquet], parquet)
    finally:
        for t in tmp.values():
            t.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export(index: str | Path, opts: Options) -> dict:
    """Write (or continue writing) the clip-retrieval folder `opts.dest` from the index at `index`."""
    if opts.part_rows < 1:
        raise ValueError(f"--part-rows must be at least 1, not {opts.part_rows}")
    start = time.perf_counter()
    gen = open_rows(index)
    kind = gen.meta.get("kind", "image")
    emb, dest = EMB.get(kind, "img_emb"), Path(opts.dest)
    manifest = _manifest(gen, index, opts.part_rows)
    same = _prepare(dest, manifest)
    for sub in (emb, "metadata"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    atomic_write(dest / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    parts = -(-gen.count // opts.part_rows)
    bar = tqdm(total=gen.count, desc="export clip-retrieval", unit="row", disable=not opts.progress)
    kept = written = 0
    for p in range(parts):
        first, last = p * opts.part_rows, min((p + 1) * opts.part_rows, gen.count)
        suffix = part_suffix(p, parts)
        npy, parquet = dest / emb / f"{emb}_{suffix}.npy", dest / "metadata" / f"metadata_{suffix}.parquet"
        if same and _complete(npy, parquet, last - first, gen.dim):
            kept += 1
            bar.update(last - first)
            continue
        _write_part(gen, first, last, npy, parquet, opts, bar)
        written += 1
    bar.close()
    for stale in [*(dest / emb).glob(".*.tmp"), *(dest / "metadata").glob(".*.tmp")]:  # a killed run's
        stale.unlink(missing_ok=True)
    took = time.perf_counter() - start
    return {
        "target": "clip-retrieval", "folder": str(dest), "embeddings": f"{emb}/", "kind": kind, "rows": gen.count,
        "dim": gen.dim, "dtype": DTYPE.name, "parts": parts, "parts_written": written, "parts_kept": kept,
        "bytes": sum(os.path.getsize(dest / emb / f"{emb}_{part_suffix(p, parts)}.npy") for p in range(parts)),
        "seconds": round(took, 2), "rows_per_s": round(gen.count / max(took, 1e-9)),
    }  # fmt: skip
