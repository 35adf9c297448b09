"""Test helpers for parquet: a footer rewriter, to make files that declare what they do not hold.

A parquet footer is a Thrift compact-protocol FileMetaData. `patch_footer` walks it field by field
(a generic compact reader, no schema), replaces the integers at the given field paths, and writes
the footer back with its new length, leaving the data pages as they were: e.g. a row group that
declares 2 GiB uncompressed in a 2 kB file."""

from __future__ import annotations

from pathlib import Path


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _encode_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _zigzag(v: int) -> int:
    return (v << 1) ^ (v >> 63)


def _value(buf: bytes, i: int, t: int, path: tuple, spans: dict) -> int:
    """Skip one value of compact type `t` at i, recording the spans of integers by field path."""
    if t in (1, 2):  # a bool inside a list is one byte; as a field it is in the header
        return i
    if t == 3:
        return i + 1
    if t in (4, 5, 6):
        start = i
        _, i = _varint(buf, i)
        spans[path] = (start, i)
        return i
    if t == 7:
        return i + 8
    if t == 8:
        n, i = _varint(buf, i)
        return i + n
    if t in (9, 10):
        head = buf[i]
        i += 1
        n, et = head >> 4, head & 0x0F
        if n == 15:
            n, i = _varint(buf, i)
        for k in range(n):
            i = i + 1 if et in (1, 2) else _value(buf, i, et, (*path, k), spans)
        return i
    if t == 11:
        n, i = _varint(buf, i)
        if n:
            kv = buf[i]
            i += 1
            for k in range(n):
                i = _value(buf, i, kv >> 4, (*path, k, "k"), spans)
                i = _value(buf, i, kv & 0x0F, (*path, k, "v"), spans)
        return i
    if t == 12:
        fid = 0
        while True:
            head = buf[i]
            i += 1
            if head == 0:
                return i
            delta, ft = head >> 4, head & 0x0F
            if delta:
                fid += delta
            else:
                z, i = _varint(buf, i)
                fid = (z >> 1) ^ -(z & 1)
            i = _value(buf, i, ft, (*path, fid), spans)
    raise ValueError(f"unknown compact type {t}")


def patch_footer(path: str | Path, values: dict[tuple, int]) -> None:
    """Set the integers at Thrift field paths of the footer, e.g. (4, 0, 3) = row_groups[0].num_rows,
    (4, 0, 1, 0, 3, 6) = row_groups[0].columns[0].meta_data.total_uncompressed_size."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[-8:-4], "little")
    footer = data[-8 - n : -8]
    spans: dict[tuple, tuple[int, int]] = {}
    _value(footer, 0, 12, (), spans)
    for p in sorted(values, key=lambda p: spans[p][0], reverse=True):
        a, b = spans[p]
        footer = footer[:a] + _encode_varint(_zigzag(values[p])) + footer[b:]
    Path(path).write_bytes(data[: -8 - n] + footer + len(footer).to_bytes(4, "little") + b"PAR1")


def footer_fields(path: str | Path) -> set[tuple]:
    """The integer field paths of a footer (to find the ones to patch)."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[-8:-4], "little")
    spans: dict[tuple, tuple[int, int]] = {}
    _value(data[-8 - n : -8], 0, 12, (), spans)
    return set(spans)
