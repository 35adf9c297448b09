"""The CRC-32 check of a `torch.save` file before it is loaded.

`torch.save` writes a zip container (stored, not compressed) that holds a CRC-32 of every record
(`data.pkl`, one `data/<n>` per tensor storage), but `torch.load` never checks them: a flipped bit
inside the weights loads silently. `check_zip_crcs` recomputes every record's CRC-32 from a memory
map of the file (no copy) on a few threads (`zlib.crc32` releases the GIL), largest records first,
and names the file and the record that does not match. It reads every byte once: on a B/16 model
file (812 MB) see docs/reliability.md for what it costs against `torch.load`.
"""

from __future__ import annotations

import mmap
import os
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ZIP_MAGIC = b"PK\x03\x04"  # a local file header: every torch.save file since PyTorch 1.6 starts with one
LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length (30 bytes)
PIECE = 1 << 26  # 64 MiB per zlib.crc32 call


def _record_crc(mm: mmap.mmap, start: int, size: int) -> int:
    crc = 0
    with memoryview(mm) as whole:
        for i in range(start, start + size, PIECE):
            with whole[i : min(i + PIECE, start + size)] as piece:
                crc = zlib.crc32(piece, crc)
    return crc


def _data_start(mm: mmap.mmap, info: zipfile.ZipInfo, path: Path) -> int:
    """Offset of the record's bytes: after its local header, whose extra field may differ from the
    central directory's (torch pads it so tensor data is 64-byte aligned)."""
    h = info.header_offset
    if h + LOCAL_HEADER.size > len(mm):
        raise ValueError(f"{path}: corrupt: record {info.filename!r} starts past the end of the file")
    sig, name_len, extra_len = LOCAL_HEADER.unpack_from(mm, h)
    start = h + LOCAL_HEADER.size + name_len + extra_len
    if sig != ZIP_MAGIC or start + info.compress_size > len(mm):
        raise ValueError(f"{path}: corrupt: record {info.filename!r} has a damaged header (offset {h})")
    return start


def check_zip_crcs(path: str | Path, threads: int = 0) -> bool:
    """Verify the CRC-32 of every record of the torch zip file `path`.

    Returns True when all match, False when `path` is not a zip container (the legacy torch format
    before 1.6 has no CRCs: nothing to check). Raises ValueError `<path>: corrupt: ...` naming the
    record when one does not match or the container is damaged (truncated: no central directory).
    `threads`: 0 = min(8, CPU count).
    """
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(4) != ZIP_MAGIC:
            return False
        try:
            infos = zipfile.ZipFile(f).infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            size = path.stat().st_size
            raise ValueError(f"{path}: corrupt: the zip container is damaged or truncated ({e}; {size} bytes)") from e
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            stored = [i for i in infos if i.compress_type == zipfile.ZIP_STORED]
            spans = sorted(((_data_start(mm, i, path), i) for i in stored), key=lambda s: -s[1].compress_size)
            workers = threads or min(8, os.cpu_count() or 1)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                crcs = list(pool.map(lambda s: _record_crc(mm, s[0], s[1].compress_size), spans))
        bad = [(i, c) for (_, i), c in zip(spans, crcs) if c != i.CRC]
        if bad:
            info, crc = bad[0]
            raise ValueError(
                f"{path}: corrupt: record {info.filename!r} has CRC-32 {crc:08x} but the file says {info.CRC:08x} "
                f"({len(bad)} of {len(infos)} records differ); the file changed after it was written "
                "(a flipped bit, a bad copy or download)"
            )
        _check_compressed(f, [i for i in infos if i.compress_type != zipfile.ZIP_STORED], path)
    return True


def _check_compressed(f, infos: list[zipfile.ZipInfo], path: Path) -> None:
    """Compressed records (torch never writes them; other zip writers may): zipfile checks the CRC
    while it inflates."""
    if not infos:
        return
    with zipfile.ZipFile(f) as z:
        for info in infos:
            try:
                with z.open(info) as r:
                    while r.read(PIECE):
                        pass
            except (zipfile.BadZipFile, zlib.error, OSError) as e:
                raise ValueError(f"{path}: corrupt: record {info.filename!r}: {e}") from e
