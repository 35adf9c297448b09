"""Parquet files as pair sources: `--data-path pairs.parquet`, a folder of them, or a glob.

A file is read one row group at a time (its "unit"), streamed in record batches of a few dozen rows,
so memory stays flat however large the files are. Before anything is read, each file's footer is
checked against the file: a row group that declares more rows or bytes than `MAX_ROW_GROUP_*`, or
data past the end of the file, is refused with an error naming the file and row group (a hostile or
truncated footer cannot make a reader allocate what it declares). A file that is not parquet is an
error naming it. pyarrow (the `parquet` extra) does the reading; this module only plans it.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAX_ROW_GROUP_ROWS = 10_000_000  # a row group declaring more is refused (a sane writer uses far fewer)
MAX_ROW_GROUP_BYTES = 1 << 30  # uncompressed bytes of the columns read, per row group: 1 GiB
READ_ROWS = 64  # rows per record batch streamed out of a row group
SPLIT_NAME = re.compile(r"^(train|test|validation|valid|val|dev)[-_.]", re.IGNORECASE)


class TableError(ValueError):
    """A parquet or Arrow source that cannot be read as pairs: the message names the file."""


@dataclass(frozen=True)
class Unit:
    """One readable piece of a table file: a parquet row group, or an Arrow record batch."""

    file: str
    index: int  # row group (parquet) or record batch (Arrow) number in the file
    rows: int
    kind: str  # "parquet" or "arrow"


def pyarrow():
    """The pyarrow module, or an ImportError naming the extra to install."""
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401 - the submodule this package reads with
    except ImportError:
        raise ImportError("reading parquet and Arrow data needs pyarrow: pip install 'siglip[parquet]'") from None
    return pa


def is_parquet_reference(data_path: str) -> bool:
    """A .parquet file or a glob of them (folders are decided by their contents)."""
    return data_path.lower().endswith(".parquet")


def parquet_files(data_path: str) -> list[str]:
    """The parquet files a reference names: a file, a glob (`data/train-*.parquet`), or a folder
    (every .parquet under it; where the names say several splits, `train-*` ones only)."""
    p = Path(data_path)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet") if f.is_file())
        splits = {m.group(1).lower() for f in files if (m := SPLIT_NAME.match(Path(f).name))}
        if len(splits) > 1 and "train" in splits:
            log.warning("%s: parquet files of splits %s; training on the train-* files", p, sorted(splits))
            files = [f for f in files if Path(f).name.lower().startswith("train")]
    elif any(c in data_path for c in "*?["):
        files = sorted(f for f in glob.glob(data_path, recursive=True) if os.path.isfile(f))
    else:
        files = [data_path] if p.is_file() else []
    if not files:
        raise FileNotFoundError(f"--data-path {data_path}: no parquet file found")
    return files


def open_parquet(path: str, buffer_size: int = 0):
    """pyarrow's ParquetFile, or TableError naming `path` when it is not (or no longer) parquet.
    `buffer_size` > 0: column chunks are read that many bytes at a time, not whole."""
    pa = pyarrow()
    try:
        return pa.parquet.ParquetFile(path, buffer_size=buffer_size)
    except (pa.ArrowException, OSError) as e:
        raise TableError(f"{path}: not a readable parquet file ({e})") from None


def _check_row_group(path: str, md, g: int, columns: list[str], size: int) -> int:
    """Rows of row group `g` after checking what its footer declares; TableError when absurd."""
    rg = md.row_group(g)
    rows = rg.num_rows
    if rows < 0 or rows > MAX_ROW_GROUP_ROWS:
        raise TableError(f"{path}: row group {g} declares {rows} rows (at most {MAX_ROW_GROUP_ROWS:,} are read)")
    wanted = tuple(columns)
    declared = 0
    for c in range(rg.num_columns):
        col = rg.column(c)
        if not (col.path_in_schema + ".").startswith(tuple(w + "." for w in wanted)):
            continue
        start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
        if start is None or start < 0 or col.total_compressed_size < 0 or start + col.total_compressed_size > size:
            raise TableError(
                f"{path}: row group {g} column {col.path_in_schema} declares data past the end of the file "
                f"({size} bytes): truncated or corrupt"
            )
        declared += max(col.total_uncompressed_size, col.total_compressed_size)
    if declared > MAX_ROW_GROUP_BYTES:
        raise TableError(
            f"{path}: row group {g} declares {declared / 2**30:.1f} GiB in columns {list(wanted)}, more than the "
            f"{MAX_ROW_GROUP_BYTES / 2**30:.0f} GiB read at once; rewrite it with smaller row groups "
            "(pyarrow.parquet.write_table(..., row_group_size=1000))"
        )
    return rows


def parquet_units(path: str, columns: list[str]) -> list[Unit]:
    """The row groups of one file, their footer checked (see the module docstring)."""
    md = open_parquet(path).metadata
    size = os.path.getsize(path)
    units = [Unit(path, g, _check_row_group(path, md, g, columns, size), "parquet") for g in range(md.num_row_groups)]
    if sum(u.rows for u in units) != md.num_rows:
        raise TableError(
            f"{path}: the row groups hold {sum(u.rows for u in units)} rows, the footer says {md.num_rows}"
        )
    return units


def parquet_schema(path: str):
    """The Arrow schema of a parquet file (footer only)."""
    return open_parquet(path).schema_arrow


def read_parquet_rows(unit: Unit, columns: list[str], lo: int = 0, hi: int | None = None) -> Iterator:
    """Record batches of rows [lo, hi) of a row group, READ_ROWS at a time (rows before `lo` are
    read and dropped: parquet has no cheaper way to start mid-group)."""
    hi = unit.rows if hi is None else hi
    pf = open_parquet(unit.file, buffer_size=1 << 20)  # streamed: memory stays flat in big row groups
    pos = 0
    for batch in pf.iter_batches(batch_size=READ_ROWS, row_groups=[unit.index], columns=columns, use_threads=False):
        end = pos + batch.num_rows
        if end > lo and pos < hi:
            yield batch.slice(max(lo - pos, 0), min(hi, end) - max(lo, pos))
        pos = end
        if pos >= hi:
            return
