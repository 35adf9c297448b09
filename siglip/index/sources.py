"""What `siglip embed` embeds: the items of a source, each with a stable key.

- a folder: every image in it, recursively (extensions in `siglip.data.IMAGE_EXTENSIONS`), sorted;
- a manifest (.csv / .tsv with a header row, or .jsonl): an image column (found among common names or
  given) and an optional caption column; relative paths resolve against the manifest's folder;
- parquet files (a file, a folder or a glob) or a `datasets.save_to_disk` folder: one item per row,
  its image from the Image struct, bytes or a path column, read by row group (`siglip.data.tables`);
- webdataset shards (`'dir/{00000..00099}.tar'` or one `.tar`): every member with an image extension,
  grouped by key as img2dataset writes them; read by offset, so workers decode them in parallel;
- a text file (`--texts FILE`): one text a line (blank lines skipped).

A key names an item across runs (absolute path; `line:path` for manifests; `shard::key`; `file::row`
for parquet/Arrow rows; `line:N` for texts), so an interrupted or repeated run embeds only the items whose keys the index lacks.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from siglip.data.manifests import IMAGE_EXTENSIONS, ManifestError, load_image, manifest_rows
from siglip.data.tables import Tables, find_tables, read_rows, row_image
from siglip.data.webdataset import IMAGE_EXTS, is_shard_pattern, shard_list


@dataclass
class Item:
    """One row of an index. `record` is its line in items.jsonl; an image item is read from `path`,
    or from bytes [offset, offset + size) of the tar `path` when offset >= 0, or from row `row` of
    unit `unit` of `tables` (parquet/Arrow)."""

    key: str
    record: dict = field(default_factory=dict)
    path: str = ""
    offset: int = -1
    size: int = 0
    tables: Tables | None = None
    unit: int = -1
    row: int = -1

    def open(self) -> Image.Image:
        if self.tables is not None:
            return load_image(row_image(self.tables, self.unit, self.row))
        if self.offset < 0:
            return load_image(self.path)
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        return load_image(io.BytesIO(data))


def folder_items(root: Path) -> list[Item]:
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    return [Item(os.path.abspath(p), {"path": os.path.abspath(p)}, os.path.abspath(p)) for p in paths]


def manifest_items(path: Path, image_column: str = "", caption_column: str = "") -> list[Item]:
    """One item per manifest row (the training reader's rows: BOM, CRLF, long quoted fields); the
    caption column is optional here."""
    root, items = path.resolve().parent, []
    for line_no, image, caption in manifest_rows(path, image_column, caption_column, caption_required=False):
        if not isinstance(image, str) or not image.strip():
            raise ManifestError(f"{path}:{line_no}: empty or missing image path")
        p = os.path.abspath(root / image.strip())
        record = {"path": p, "line": line_no}
        if isinstance(caption, str):
            record["caption"] = caption
        items.append(Item(f"{line_no}:{p}", record, p))
    if not items:
        raise ManifestError(f"{path}: no rows")
    return items


def scan_shard(shard: str, captions: bool = True) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """One pass over a tar's headers: {key: (byte offset, size)} of its first image member per key
    (no image is read), and {key: caption} of its .txt members (read) when `captions`."""
    images, texts = {}, {}
    with tarfile.open(shard, "r:") as tar:
        for m in tar:
            folder, name = os.path.split(m.name)
            stem, _, ext = name.partition(".")
            key = os.path.join(folder, stem)
            if m.isfile() and ext.lower() in IMAGE_EXTS and key not in images:
                images[key] = (m.offset_data, m.size)
            elif captions and m.isfile() and ext.lower() == "txt":
                texts[key] = tar.extractfile(m).read().decode("utf-8", "replace").strip()
    return images, texts


def shard_items(pattern: str) -> list[Item]:
    """Image members of the shards, by tar headers (no image is read); a .txt caption is kept."""
    items = []
    for shard in shard_list(pattern):
        shard = os.path.abspath(shard)
        images, captions = scan_shard(shard)
        for key, (offset, size) in images.items():
            record = {"shard": shard, "key": key} | ({"caption": captions[key]} if key in captions else {})
            items.append(Item(f"{shard}::{key}", record, shard, offset, size))
    return items


def table_items(tables: Tables) -> list[Item]:
    """One item per row of a parquet/Arrow source (captions read, no image); images are read by
    row group when the items are opened in order."""
    items = []
    for u, unit in enumerate(tables.units):
        captions = [None] * unit.rows
        if tables.caption_column:
            captions = [
                v for b in read_rows(tables, u, columns=[tables.caption_column]) for v in b.column(0).to_pylist()
            ]
        for r, caption in enumerate(captions):
            row = tables.file_rows[u] + r
            record = {"file": os.path.abspath(unit.file), "row": row}
            if isinstance(caption, str) or (isinstance(caption, list) and caption):
                record["caption"] = caption if isinstance(caption, str) else caption[0]
            items.append(Item(f"{os.path.abspath(unit.file)}::{row}", record, unit.file, tables=tables, unit=u, row=r))
    return items


def text_items(path: Path) -> list[Item]:
    if not path.is_file():
        raise FileNotFoundError(f"--texts {path}: no such file")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [Item(f"line:{n}", {"text": t.strip(), "line": n}) for n, t in enumerate(lines, 1) if t.strip()]


def list_items(src: str, texts: bool = False, image_column: str = "", caption_column: str = "") -> list[Item]:
    """The items of `src` in a fixed order (see the module docstring for what `src` can be)."""
    p = Path(src)
    if texts:
        return text_items(p)
    if is_shard_pattern(src):
        return shard_items(src)
    if (tables := find_tables(src, image_column, caption_column, caption_required=False)) is not None:
        return table_items(tables)
    if p.is_dir():
        return folder_items(p)
    if p.is_file() and p.suffix.lower() in (".csv", ".tsv", ".jsonl"):
        return manifest_items(p, image_column, caption_column)
    raise FileNotFoundError(
        f"{src}: not a folder, a .csv/.tsv/.jsonl manifest, parquet, or tar shards ('dir/{{00000..00009}}.tar'); "
        "for a text file use --texts"
    )
