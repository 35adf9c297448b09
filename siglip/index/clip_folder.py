"""clip-retrieval's embedding folders: the layout `clip-retrieval inference` writes (its OutputSink), that
autofaiss builds indexes from and clip-back serves, read and checked before anything is copied.

    DIR/img_emb/img_emb_<i>.npy            (n_i, d) float16 unit rows: the images' embeddings
    DIR/text_emb/text_emb_<i>.npy          (n_i, d) the captions' embeddings, the same items
    DIR/metadata/metadata_<i>.parquet      row for row: image_path, caption (when texts were embedded),
                                           and the source's other columns (url, key, ...)

<i> is the part number zero-padded to int(log10(part count)) + 1 digits (`part_suffix`): 2 parts are
img_emb_0, img_emb_1; 10 parts img_emb_00 .. img_emb_09. Parts are read in the order of their numbers
(the same order as autofaiss's sorted file names when the padding is the same, as clip-retrieval
writes it), so row r of the folder is row r of an autofaiss index built from it.

`scan` finds every part and checks, without reading the rows, that each .npy is a 2-D float array of
one dimension and has its metadata part with the same row count and the column the rows need
(image_path for img_emb, caption for text_emb); each problem is a ValueError (FileNotFoundError for a
missing part) naming the file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from siglip.index.search import npy_layout

EMB = {"image": "img_emb", "text": "text_emb"}  # the index kind -> its folder (and file prefix)
KIND = {v: k for k, v in EMB.items()}
COLUMN = {"image": "image_path", "text": "caption"}  # the metadata column each kind needs
DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


def part_suffix(i: int, parts: int) -> str:
    """Part `i` of `parts` as clip-retrieval's OutputSink names it: zero-padded to log10(parts) + 1 digits."""
    return str(i).zfill(int(math.log10(max(parts, 1))) + 1)


@dataclass
class Part:
    """One part: its rows file, its metadata file, the row count, and the rows' .npy layout."""

    suffix: str
    npy: Path
    parquet: Path
    rows: int
    layout: tuple  # (data offset, shape, dtype)


@dataclass
class Folder:
    """A clip-retrieval folder's parts of one kind (img_emb or text_emb), checked, in part order."""

    root: Path
    emb: str  # "img_emb" / "text_emb"
    parts: list[Part]

    @property
    def kind(self) -> str:
        return KIND[self.emb]

    @property
    def count(self) -> int:
        return sum(p.rows for p in self.parts)

    @property
    def dim(self) -> int:
        return int(self.parts[0].layout[1][1])

    @property
    def dtype(self) -> np.dtype:
        """float16, as clip-retrieval writes; float32 when any part is float32 (nothing is rounded)."""
        return max((np.dtype(p.layout[2]) for p in self.parts), key=lambda t: t.itemsize)

    def files(self) -> list[list]:
        """[name under root, size, mtime_ns] of every part file: what changes when the folder does."""
        return _stamps(self.root, [f for p in self.parts for f in (p.npy, p.parquet)])


def _stamps(root: Path, files: list[Path]) -> list[list]:
    out = []
    for f in files:
        st = f.stat()
        out.append([f.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return out


def listing(root: str | Path, emb: str) -> list[list] | None:
    """`Folder.files()` of the folder as it is now, from file names and stat alone (no file opened):
    what tells an import still up to date cheaply. None where `scan` would find a problem to name."""
    root = Path(root)
    try:
        npys = _numbered(root / emb, emb, ".npy")
        pairs = [(npys[s], root / "metadata" / f"metadata_{s}.parquet") for s in sorted(npys, key=int)]
        return _stamps(root, [f for pair in pairs for f in pair])
    except (OSError, ValueError):
        return None


def locate(path: str | Path) -> tuple[Path, str] | None:
    """(folder, "img_emb" / "text_emb") when `path` is a clip-retrieval folder (image rows preferred
    when it has both) or its img_emb/ or text_emb/ folder (those rows); None otherwise."""
    path = Path(path)
    if path.name in KIND and path.is_dir():
        return path.parent, path.name
    for emb in EMB.values():
        if (path / emb).is_dir() and any((path / emb).glob("*.npy")):
            return path, emb
    return None


def _numbered(folder: Path, prefix: str, ext: str) -> dict[str, Path]:
    """{suffix: file} of folder/prefix_<digits>.ext; any other file of that extension is an error."""
    out: dict[str, Path] = {}
    seen: dict[int, Path] = {}
    for f in sorted(folder.glob(f"*{ext}")):
        m = re.fullmatch(rf"{prefix}_(\d+){re.escape(ext)}", f.name)
        if m is None:
            raise ValueError(f"{f}: not a part of a clip-retrieval folder (expected {prefix}_<i>{ext})")
        if int(m[1]) in seen:
            raise ValueError(f"{f}: part {int(m[1])} again (also {seen[int(m[1])].name})")
        seen[int(m[1])] = f
        out[m[1]] = f
    return out


def _check_npy(npy: Path) -> tuple:
    try:
        layout = npy_layout(npy)
    except ValueError as e:
        raise ValueError(f"{npy}: not a readable .npy file ({e})") from None
    _, shape, dtype = layout
    if len(shape) != 2 or np.dtype(dtype) not in DTYPES:
        raise ValueError(f"{npy}: {shape} {dtype}; expected (rows, dim) float16 or float32 embeddings")
    return layout


def _check_parquet(parquet: Path, npy: Path, rows: int, column: str) -> None:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(parquet).metadata
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
        raise ValueError(f"{parquet}: not a readable parquet file ({type(e).__name__}: {e})") from None
    names = meta.schema.names
    if column not in names:
        raise ValueError(
            f"{parquet}: no {column!r} column (it has {', '.join(names) or 'none'}); the {npy.parent.name} rows "
            f"need it ({COLUMN['image']} for img_emb, {COLUMN['text']} for text_emb)"
        )
    if meta.num_rows != rows:
        raise ValueError(f"{parquet}: {meta.num_rows} rows, but {npy} has {rows}: the metadata must be row for row")


def scan(root: str | Path, emb: str) -> Folder:
    """The checked parts of `root`/`emb` (see the module docstring for what is checked)."""
    root = Path(root)
    npys = _numbered(root / emb, emb, ".npy")
    if not npys:
        raise FileNotFoundError(f"{root / emb}: no {emb}_<i>.npy parts")
    metadata = _numbered(root / "metadata", "metadata", ".parquet") if (root / "metadata").is_dir() else {}
    parts = []
    for suffix, npy in sorted(npys.items(), key=lambda kv: int(kv[0])):
        parquet = root / "metadata" / f"metadata_{suffix}.parquet"
        if suffix not in metadata:
            raise FileNotFoundError(f"{parquet}: missing (the metadata of {npy})")
        layout = _check_npy(npy)
        rows, dim = layout[1]
        if parts and dim != parts[0].layout[1][1]:
            raise ValueError(f"{npy}: rows of dim {dim}, but {parts[0].npy} has dim {parts[0].layout[1][1]}")
        _check_parquet(parquet, npy, rows, COLUMN[KIND[emb]])
        parts.append(Part(suffix, npy, parquet, rows, layout))
    orphans = sorted(set(metadata) - set(npys), key=int)
    if orphans:
        raise ValueError(f"{metadata[orphans[0]]}: a metadata part without {emb}/{emb}_{orphans[0]}.npy")
    return Folder(root, emb, parts)
