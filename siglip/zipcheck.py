"""The CRC-32 check of a `torch.save` file, before it is loaded.

`torch.save` writes a zip container (stored, not compressed) that holds a CRC-32 of every record
(`data.pkl`, one `data/<n>` per tensor storage), but `torch.load` never checks them: a flipped bit
inside the weights loads silently. `check_zip_crcs` recomputes every record's CRC-32 from a memory
map of the file (no copy; the largest records first, on a few threads where the CRC releases the
GIL) and names the file and the record that does not match; `load_checked` is that check, then
`torch.load(weights_only=True)`. What it costs on a B/16 model file (812 MB): docs/reliability.md.

The CRC-32 itself is ISA-L's where the optional `isal` package is installed (`pip install
'siglip[fastcrc]'`: carry-less multiplies, about 4x zlib's on one core), else zlib's.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import torch

try:  # the same CRC-32 as zlib's, computed with carry-less multiplies
    from isal.isal_zlib import crc32 as FAST_CRC32
except ImportError:
    FAST_CRC32 = None

ZIP_MAGIC = b"PK\x03\x04"  # a local file header: every torch.save file since PyTorch 1.6 starts with one
LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length (30 bytes)
PIECE = 64 << 20  # bytes per CRC call
THREADS = 4  # at most: zlib's CRC releases the GIL, and a memory map has no lock


class Record(NamedTuple):
    name: str
    start: int  # offset of the record's bytes in the file
    end: int
    crc: int  # as the zip's central directory holds it


def records(f: io.BufferedIOBase | io.RawIOBase, path: Path) -> list[Record] | None:
    """The records of the zip file open as `f`; None when it is not a zip (the
    torch format before 1.6 has no CRCs). Raises `<path>: corrupt: ...` for a damaged container."""
    f.seek(0)
    if f.read(4) != ZIP_MAGIC:
        return None
    size = f.seek(0, io.SEEK_END)
    try:
        infos = zipfile.ZipFile(f).infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ValueError(f"{path}: corrupt: the zip container is damaged or truncated ({e}; {size} bytes)") from e
    out = []
    for info in infos:
        f.seek(info.header_offset)
        head = f.read(LOCAL_HEADER.size)
        sig, name_len, extra_len = LOCAL_HEADER.unpack(head) if len(head) == LOCAL_HEADER.size else (b"", 0, 0)
        start = info.header_offset + LOCAL_HEADER.size + name_len + extra_len
        if sig != ZIP_MAGIC or start + info.compress_size > size:
            raise ValueError(
                f"{path}: corrupt: record {info.filename!r} has a damaged header (offset {info.header_offset})"
            )
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(
                f"{path}: record {info.filename!r} is compressed; torch.save files store records as they are"
            )
        out.append(Record(info.filename, start, start + info.compress_size, info.CRC))
    return out


def _crc_from_file(mm: mmap.mmap, rec: Record, crc32: Callable) -> int:
    crc = 0
    with memoryview(mm) as whole:
        for i in range(rec.start, rec.end, PIECE):
            with whole[i : min(i + PIECE, rec.end)] as piece:
                crc = crc32(piece, crc)
    return crc


def check_zip_crcs(path: str | Path, crc32: Callable | None = None) -> bool:
    """Verify the CRC-32 of every record of the torch zip file `path` without loading it. True: all
    match; False: not a zip (legacy torch format, nothing to check); raises `<path>: corrupt: ...`.
    `crc32`: the function (default ISA-L's where installed, else zlib's)."""
    path, crc32 = Path(path), crc32 or FAST_CRC32 or zlib.crc32
    with open(path, "rb", buffering=0) as f:
        recs = records(f, path)
        if recs is None:
            return False
        recs = sorted(recs, key=lambda r: r.start - r.end)  # largest first: the threads finish together
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            with ThreadPoolExecutor(max_workers=min(THREADS, os.cpu_count() or 1)) as pool:
                got = list(pool.map(lambda r: _crc_from_file(mm, r, crc32), recs))
    bad = [(r, c) for r, c in zip(recs, got) if c != r.crc]
    if bad:
        rec, crc = bad[0]
        raise ValueError(
            f"{path}: corrupt: record {rec.name!r} has CRC-32 {crc:08x} but the file says {rec.crc:08x} "
            f"({len(bad)} of {len(recs)} records differ); the file changed after it was written (a flipped "
            "bit, a bad copy or download)"
        )
    return True


def load_checked(path: str | Path, crc32: Callable | None = None) -> Any:
    """`check_zip_crcs(path)`, then `torch.load(path, map_location="cpu", weights_only=True)`. Raises
    ValueError `<path>: corrupt: ...` naming the record; a torch file in the pre-1.6 format (not a
    zip, no CRCs) is loaded unchecked."""
    check_zip_crcs(path, crc32)
    return torch.load(path, map_location="cpu", weights_only=True)
