"""Parquet and Arrow pair sources, resolved once: which files, which units (row groups or record
batches), which columns, and how one row becomes an (image, caption) pair.

`find_tables(--data-path)` takes a `.parquet` file, a folder or glob of them (`siglip.data.parquet`),
or a `datasets.save_to_disk` folder (`siglip.data.arrow`), and returns None for anything else (a
manifest, a caption folder, tar shards). Columns:
- image: the `datasets` Image struct `{"bytes", "path"}`, raw bytes, or a path (relative to the
  file's folder); detected among common names, then by type, or named (`data.image_column`);
- caption: a string, or a list of strings (one is drawn per epoch, seeded); detected among common
  names or named (`data.caption_column`).
A row with no usable image or caption is a `BadRow` (skipped and counted by the readers, which name
the file and row); a file without the columns is a TableError naming it.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from siglip.data.arrow import arrow_features, arrow_files, arrow_schema, arrow_units, is_arrow_folder, read_arrow_rows
from siglip.data.manifests import CAPTION_COLUMNS, IMAGE_COLUMNS
from siglip.data.parquet import (
    TableError,
    Unit,
    is_parquet_reference,
    open_parquet,
    parquet_files,
    parquet_schema,
    parquet_units,
    pyarrow,
    read_parquet_rows,
)

TABLE_IMAGE_COLUMNS = (*IMAGE_COLUMNS, "jpg", "png", "webp", "image_bytes", "img_bytes", "bytes")
TABLE_CAPTION_COLUMNS = (*[c for c in CAPTION_COLUMNS if c != "label"], "captions", "sentences", "texts", "alt_text")
LABEL_COLUMNS = ("label", "labels", "class", "fine_label", "target")


class BadRow(ValueError):
    """A row that gives no pair (no image, an empty caption ...): skipped and counted."""


@dataclass(eq=False)  # hashed by identity (row_image's cache)
class Tables:
    """A resolved parquet/Arrow source. `image_kind`: struct, bytes or path; global row ids number
    the rows of `units` in order (`offsets[u]` is unit u's first)."""

    reference: str
    units: list[Unit]
    image_column: str
    image_kind: str
    caption_column: str = ""  # "" when the reader needs no caption (siglip embed)
    caption_list: bool = False
    label_column: str = ""
    offsets: list[int] = field(default_factory=list)
    file_rows: list[int] = field(default_factory=list)  # unit u's first row, counted within its file

    def __post_init__(self):
        self.offsets, self.file_rows = [0], []
        for i, u in enumerate(self.units):
            self.offsets.append(self.offsets[-1] + u.rows)
            same_file = i and self.units[i - 1].file == u.file
            self.file_rows.append(self.file_rows[-1] + self.units[i - 1].rows if same_file else 0)

    def where(self, u: int, row: int) -> str:
        """'FILE row N (row group G)' for row `row` of unit `u`, as the bad-row warnings name it."""
        unit = self.units[u]
        return f"{unit.file} row {self.file_rows[u] + row} ({'row group' if unit.kind == 'parquet' else 'batch'} {unit.index})"

    @property
    def n_rows(self) -> int:
        return self.offsets[-1]

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.image_column, self.caption_column, self.label_column) if c]


def is_table_reference(data_path: str) -> bool:
    if not data_path or data_path == "digits":
        return False
    p = Path(data_path)
    if is_parquet_reference(data_path) or is_arrow_folder(p):
        return True
    return p.is_dir() and next(p.rglob("*.parquet"), None) is not None


def _is_text(t, pa) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _image_kind(name: str, t, pa) -> str | None:
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        return "struct"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    return "path" if _is_text(t, pa) else None


def _caption_list(name: str, t, pa) -> bool | None:
    """False: a string column; True: a list of strings; None: neither."""
    if _is_text(t, pa):
        return False
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_text(t.value_type, pa):
        return True
    return None


def _pick(schema, wanted: str, names: tuple[str, ...], judge, what: str, where: str, required: bool):
    """(column, judge(column's type)) for the named column, else the first candidate of a usable type."""
    pa = pyarrow()
    lower = {n.lower(): n for n in schema.names}
    if wanted:
        if wanted not in schema.names:
            raise TableError(f"{where}: no {what} column {wanted!r}; columns are {schema.names}")
        got = judge(wanted, schema.field(wanted).type, pa)
        if got is None:
            raise TableError(f"{where}: column {wanted!r} ({schema.field(wanted).type}) cannot hold {what}s")
        return wanted, got
    by_type = [n for n in schema.names if what == "image" and judge(n, schema.field(n).type, pa) in ("struct", "bytes")]
    for name in [lower[c] for c in names if c in lower] + by_type:
        got = judge(name, schema.field(name).type, pa)
        if got is not None:
            return name, got
    if not required:
        return "", None
    raise TableError(
        f"{where}: cannot find the {what} column among {schema.names} ({schema}); name it with "
        f"--config.data.{what}_column=NAME in training, --{what}-column NAME in the siglip command"
    )


def find_tables(
    data_path: str, image_column: str = "", caption_column: str = "", caption_required: bool = True, label: bool = False
) -> Tables | None:
    """The parquet/Arrow source `data_path` names (see the module docstring), or None if it names none."""
    if not is_table_reference(data_path):
        return None
    arrow = is_arrow_folder(data_path)
    files = arrow_files(data_path) if arrow else parquet_files(data_path)
    schema = arrow_schema(files[0]) if arrow else parquet_schema(files[0])
    where = data_path if arrow else files[0]
    img, kind = _pick(schema, image_column, TABLE_IMAGE_COLUMNS, _image_kind, "image", where, True)
    cap, is_list = _pick(
        schema, caption_column, TABLE_CAPTION_COLUMNS, _caption_list, "caption", where, caption_required
    )
    lab = next((schema.names[i] for i, n in enumerate(map(str.lower, schema.names)) if n in LABEL_COLUMNS), "")
    columns = [c for c in (img, cap, lab if label else "") if c]
    units: list[Unit] = []
    for f in files:
        if not arrow:
            names = parquet_schema(f).names
            if missing := [c for c in columns if c not in names]:
                raise TableError(f"{f}: no column {missing[0]!r} (the first file has it); columns are {names}")
        units += arrow_units(f) if arrow else parquet_units(f, columns)
    tables = Tables(data_path, units, img, kind, cap, bool(is_list), lab if label else "")
    if not tables.n_rows:
        raise TableError(f"{data_path}: no rows in {len(files)} file(s)")
    return tables


def read_rows(tables: Tables, u: int, lo: int = 0, hi: int | None = None, columns: list[str] | None = None) -> Iterator:
    """Record batches of rows [lo, hi) of unit `u` (all the source's columns unless given)."""
    unit = tables.units[u]
    read = read_arrow_rows if unit.kind == "arrow" else read_parquet_rows
    return read(unit, columns or tables.columns, lo, hi)


def image_input(value: object, kind: str, base: Path) -> io.BytesIO | str:
    """What `load_image` opens for one cell of the image column; BadRow when there is nothing."""
    if kind == "struct":
        if not isinstance(value, dict):
            raise BadRow("no image (null)")
        if value.get("bytes"):
            return io.BytesIO(value["bytes"])
        value, kind = value.get("path"), "path"
    if kind == "bytes":
        if not value:
            raise BadRow("no image bytes")
        return io.BytesIO(value)
    if not isinstance(value, str) or not value.strip():
        raise BadRow("no image bytes or path")
    p = Path(value.strip())
    return str(p if p.is_absolute() else base / p)


@lru_cache(maxsize=1)  # per process: items opened in order read each row group once
def _unit_images(tables: Tables, u: int) -> list:
    return [v for b in read_rows(tables, u, columns=[tables.image_column]) for v in b.column(0).to_pylist()]


def row_image(tables: Tables, u: int, r: int) -> io.BytesIO | str:
    """What `load_image` opens for row `r` of unit `u` (random access: the unit's image column is
    read whole and kept for the next call)."""
    value = _unit_images(tables, u)[r]
    return image_input(value, tables.image_kind, Path(tables.units[u].file).parent)


class TableRow(str):
    """A row's image as the evaluation readers list it: the string 'FILE::ROW'; `open()` gives what
    `load_image` reads."""

    def __new__(cls, tables: Tables, u: int, r: int):
        self = super().__new__(cls, f"{os.path.abspath(tables.units[u].file)}::{tables.file_rows[u] + r}")
        self.tables, self.u, self.r = tables, u, r
        return self

    def __getnewargs__(self):  # pickled into DataLoader workers
        return self.tables, self.u, self.r

    def open(self) -> io.BytesIO | str:
        return row_image(self.tables, self.u, self.r)


def pick_caption(value: object, rng: random.Random) -> str:
    """The caption of one cell: the string, or one non-empty string of a list drawn with `rng`."""
    if isinstance(value, list):
        options = [c.strip() for c in value if isinstance(c, str) and c.strip()]
        if not options:
            raise BadRow("no non-empty caption in the list")
        return options[rng.randrange(len(options))]
    if not isinstance(value, str) or not value.strip():
        raise BadRow("null or empty caption")
    return value.strip()


def table_captions(tables: Tables, limit: int) -> list[str]:
    """Up to `limit` captions from the first units (to train a tokenizer); no image is read."""
    out: list[str] = []
    for u in range(len(tables.units)):
        for batch in read_rows(tables, u, columns=[tables.caption_column]):
            for v in batch.column(0).to_pylist():
                out += [c for c in (v if isinstance(v, list) else [v]) if isinstance(c, str) and c.strip()]
            if len(out) >= limit:
                return out[:limit]
    return out


def label_names(tables: Tables) -> list[str]:
    """The label column's class names from the `datasets` ClassLabel feature, [] when not recorded."""
    if tables.units[0].kind == "arrow":
        features = arrow_features(tables.reference)
    else:
        meta = open_parquet(tables.units[0].file).schema_arrow.metadata or {}
        try:
            features = json.loads(meta.get(b"huggingface", b"{}"))["info"]["features"]
        except (json.JSONDecodeError, KeyError, TypeError):
            features = {}
    names = (features.get(tables.label_column) or {}).get("names") if isinstance(features, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else []
