"""Training pairs from disk: manifests (CSV/TSV/JSONL) and caption folders, resolved from `--data-path`.

`--data-path` decides by what is on disk:
- a file ending .csv / .tsv / .jsonl: a manifest, one image path and one caption per row (columns
  found among common names or named in the config); relative paths resolve against its folder;
- a folder: every image in it (recursively) with a same-named `.txt` caption beside it;
- `digits`: the bundled demo data (see `siglip.data.digits`);
- tar shards (`'/data/{00000..00099}.tar'`): streamed by `siglip.data.webdataset`, not listed here;
- parquet files or a `datasets.save_to_disk` folder: streamed by row group (`siglip.data.tables`).

A corrupt or missing image is skipped and counted (batches carry the count); a malformed manifest
row is an error naming the file and line.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from PIL import Image

from siglip.transforms import to_rgb

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "image_path", "filepath", "file_path", "file_name", "filename", "img", "path")
CAPTION_COLUMNS = ("caption", "text", "title", "sentence", "raw", "txt", "label")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MANIFEST_EXTENSIONS = (".csv", ".tsv", ".jsonl")

Pair = tuple[str, str]  # (image path, caption)


class ManifestError(ValueError):
    """A manifest that cannot be read: the message names the file and line."""


def _pick_column(
    names: list[str], wanted: str, candidates: tuple[str, ...], what: str, path: Path, required: bool = True
) -> str | None:
    """The named column, else the first of `candidates` present; None when absent and not `required`."""
    if wanted:
        if wanted not in names:
            raise ManifestError(f"{path}: no {what} column {wanted!r}; columns are {names}")
        return wanted
    lower = {n.lower(): n for n in names}
    for c in candidates:
        if c in lower:
            return lower[c]
    if not required:
        return None
    raise ManifestError(
        f"{path}: cannot find the {what} column among {names}; name it with "
        f"--config.data.{what}_column=NAME in training, --{what}-column NAME in the siglip command "
        f"(looked for {list(candidates)})"
    )


def _jsonl_rows(
    f, path: Path, image_column: str, caption_column: str, caption_required: bool
) -> Iterator[tuple[int, object, object]]:
    """(line number, image, caption or None) per non-empty line of a JSONL manifest."""
    img_col = cap_col = None
    for line_no, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ManifestError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        if img_col is None:
            img_col = _pick_column(list(row), image_column, IMAGE_COLUMNS, "image", path)
            cap_col = _pick_column(list(row), caption_column, CAPTION_COLUMNS, "caption", path, caption_required)
        if img_col not in row or (caption_required and cap_col not in row):
            raise ManifestError(f"{path}:{line_no}: missing key {img_col!r} or {cap_col!r}")
        yield line_no, row[img_col], row.get(cap_col) if cap_col else None


def _csv_rows(
    f, path: Path, delimiter: str, image_column: str, caption_column: str, caption_required: bool
) -> Iterator[tuple[int, str, str | None]]:
    """(line number, image, caption or None) per non-empty row of a CSV/TSV manifest with a header row."""
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 27))  # the default 128k chars fails long captions
    reader = csv.reader(f, delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(f"{path}: empty manifest (a header row is needed)") from None
    img_i = header.index(_pick_column(header, image_column, IMAGE_COLUMNS, "image", path))
    cap_col = _pick_column(header, caption_column, CAPTION_COLUMNS, "caption", path, caption_required)
    cap_i = header.index(cap_col) if cap_col else None
    try:
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise ManifestError(
                    f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)} "
                    "(a caption with the delimiter in it must be quoted)"
                )
            yield reader.line_num, row[img_i], row[cap_i] if cap_i is not None else None
    except csv.Error as e:
        raise ManifestError(f"{path}:{reader.line_num}: {e}") from None


def manifest_rows(
    path: str | Path, image_column: str = "", caption_column: str = "", caption_required: bool = True
) -> Iterator[tuple[int, object, object]]:
    """(line number, image, caption) per row of a CSV/TSV (with a header row) or JSONL manifest, as
    written; caption is None when the column is absent and not required. UTF-8 with or without a
    byte-order mark, LF or CRLF; quoted fields may hold newlines and be long."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_EXTENSIONS:
        raise ManifestError(f"{path}: unknown manifest type; expected one of {MANIFEST_EXTENSIONS}")
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is not part of the first column
        if suffix == ".jsonl":
            yield from _jsonl_rows(f, path, image_column, caption_column, caption_required)
        else:
            delimiter = "\t" if suffix == ".tsv" else ","
            yield from _csv_rows(f, path, delimiter, image_column, caption_column, caption_required)


def read_manifest(path: str | Path, image_column: str = "", caption_column: str = "") -> list[Pair]:
    """Rows of a CSV/TSV (with a header row) or JSONL manifest as (absolute image path, caption).
    UTF-8 with or without a byte-order mark, LF or CRLF, quoted fields may hold newlines; rows with
    an empty caption are skipped and counted in the log."""
    path = Path(path)
    root = path.resolve().parent
    pairs: list[Pair] = []
    empty: list[int] = []
    for line_no, image, caption in manifest_rows(path, image_column, caption_column):
        if not isinstance(image, str) or not image.strip():
            raise ManifestError(f"{path}:{line_no}: empty or missing image path")
        if not isinstance(caption, str):
            raise ManifestError(f"{path}:{line_no}: caption is not text: {caption!r}")
        if not caption.strip():
            empty.append(line_no)
            continue
        image_path = Path(image.strip())
        pairs.append((str(image_path if image_path.is_absolute() else root / image_path), caption))
    if empty:
        log.warning("%s: %d rows with an empty caption skipped (first at line %d)", path, len(empty), empty[0])
    if not pairs:
        raise ManifestError(f"{path}: no rows" + (f" with a caption ({len(empty)} empty)" if empty else ""))
    return pairs


def read_caption_folder(root: str | Path) -> list[Pair]:
    """Every image under `root` with a same-named .txt file beside it (`a/b.jpg` + `a/b.txt`).
    Images without a caption file are skipped and counted in the log."""
    root = Path(root)
    pairs: list[Pair] = []
    missing = 0
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            txt = p.with_suffix(".txt")
            caption = txt.read_text(encoding="utf-8-sig").strip() if txt.is_file() else ""
            if caption:
                pairs.append((str(p), caption))
            else:
                missing += 1
    if missing:
        log.warning("%s: %d images have no (or an empty) .txt caption beside them and are skipped", root, missing)
    if not pairs:
        raise FileNotFoundError(f"{root}: no images with same-named .txt captions found")
    return pairs


def find_pairs(data_path: str, image_column: str = "", caption_column: str = "", digits_root: str = "") -> list[Pair]:
    """Resolve `--data-path` to pairs, deciding by what is on disk."""
    if not data_path:
        raise ValueError("no training data: pass --data-path (a manifest, a caption folder, or 'digits')")
    if data_path == "digits":
        from siglip.data.digits import ensure_digits

        return read_manifest(ensure_digits(digits_root or "data/digits") / "train.csv")
    p = Path(data_path)
    if p.is_dir():
        return read_caption_folder(p)
    if p.is_file():
        return read_manifest(p, image_column, caption_column)
    raise FileNotFoundError(
        f"--data-path {data_path}: no such file or folder (expected a .csv/.tsv/.jsonl manifest, "
        "a folder of images with .txt captions, webdataset shards like 'dir/{00000..00099}.tar', parquet files, "
        "a datasets.save_to_disk folder, or 'digits')"
    )


def load_image(path: str | IO[bytes], draft: int = 0) -> Image.Image:
    """Open (a path or a binary file object) and fully decode, so truncated files fail here, not later.

    `draft` > 0 (training): a JPEG is decoded at 1/2, 1/4 or 1/8 scale, the smallest whose sides
    both stay >= `draft` px (PIL's draft mode: the inverse DCT does the downscaling, at a fraction
    of the cost of decoding every pixel and resizing them). Other formats ignore it; evaluation and
    embedding decode in full, as the released models' preprocessing does."""
    with Image.open(path) as img:
        if draft > 0 and img.format == "JPEG":
            img.draft(None, (draft, draft))
        img.load()
        return img.copy() if img.mode in ("RGB", "L") else to_rgb(img)
