"""Exact top-k by cosine over an index on disk, in chunks: memory stays at one chunk however large
the index is.

The rows file (.npy, float16 or float32, unit rows) is read chunk by chunk into one reused buffer
(plain reads at the .npy data offset: the page cache serves repeated searches, and the process never
maps the whole file). Each chunk is scored against the queries and only its top k are kept; a float16
chunk is scored in float16 and its possible top-k rows rescored in float32, so the final top k are
exact: the same rows and cosines as a float32 full matmul and a sort.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

CHUNK_ROWS = 1 << 16  # 64k rows x 768 x fp16 = 96 MiB per read (+ the same in float32 while scoring)


def npy_layout(path: str | Path | BinaryIO) -> tuple[int, tuple[int, ...], np.dtype]:
    """(data offset in bytes, shape, dtype) of a C-order .npy file (a path, or the file open)."""
    if not isinstance(path, (str, Path)):
        path.seek(0)
        return _read_layout(path, getattr(path, "name", "rows"))
    with open(path, "rb") as f:
        return _read_layout(f, path)


def _read_layout(f: BinaryIO, name: Any) -> tuple[int, tuple[int, ...], np.dtype]:
    major, _ = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    if fortran:
        raise ValueError(f"{name}: Fortran-ordered array; an index is written in C order")
    return f.tell(), shape, dtype


FP16_TOL = 4e-3  # > the error of a float16 score: half an ulp of the result plus the query's rounding


def _merge(best: tuple[Tensor, Tensor] | None, scores: Tensor, rows: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Keep the k highest of the running best and these (m,) scores / rows: (k,), (k,)."""
    if best is not None:
        scores, rows = torch.cat([best[0], scores]), torch.cat([best[1], rows])
    top = scores.topk(min(k, len(scores)))
    return top.values, rows[top.indices]


def _chunk_candidates(block: Tensor, q: Tensor, k: int, floors: list[float]) -> list[tuple[Tensor, Tensor]]:
    """Per query: (exact float32 scores, local row ids) of the rows of `block` that can enter its top
    k, given `floors` (per query, the k-th best exact score so far; -inf before k are known). A
    float16 block is scored in float16 first (no conversion of the block; float32 accumulation), then
    only rows within FP16_TOL of the bar are rescored exactly in float32."""
    if block.dtype != torch.float16:
        scores = (block.float() @ q.T).T  # (q, m)
        return [(s, torch.arange(len(s))) for s in scores]
    rough = (block @ q.half().T).T  # (q, m) float16
    out = []
    for j, s in enumerate(rough):
        bar = floors[j] if floors[j] > -math.inf else float(s.topk(min(k, len(s))).values[-1])
        ids = (s >= bar - FP16_TOL).nonzero()[:, 0]
        out.append((block[ids].float() @ q[j], ids))
    return out


def _floors(best: list, k: int) -> list[float]:
    return [float(b[0][-1]) if b is not None and len(b[0]) == k else -math.inf for b in best]


def topk_rows(
    rows: np.ndarray | Tensor, queries: Tensor, k: int, chunk_rows: int = CHUNK_ROWS
) -> tuple[Tensor, Tensor]:
    """Exact top-k of `queries` (q, d) against in-memory `rows` (n, d): (q, k) cosines, (q, k) row ids."""
    q = queries.float().reshape(-1, queries.shape[-1])
    best: list = [None] * len(q)
    for s in range(0, len(rows), chunk_rows):
        block = torch.as_tensor(np.asarray(rows[s : s + chunk_rows]))
        for j, (sc, ids) in enumerate(_chunk_candidates(block, q, k, _floors(best, k))):
            best[j] = _merge(best[j], sc, ids + s, k)
    return _stack(best, len(q))


def _stack(best: list, nq: int) -> tuple[Tensor, Tensor]:
    if not best or best[0] is None:
        return torch.zeros(nq, 0), torch.zeros(nq, 0, dtype=torch.long)
    return torch.stack([b[0] for b in best]), torch.stack([b[1] for b in best])


def topk_file(
    path: str | Path, queries: Tensor, k: int, chunk_rows: int = CHUNK_ROWS, progress=None
) -> tuple[Tensor, Tensor]:
    """Exact top-k of `queries` (q, d) float32 unit rows against the .npy rows file at `path`:
    (q, k) cosines (descending) and (q, k) row ids. Reads `chunk_rows` rows at a time into one buffer."""
    with open(path, "rb", buffering=0) as f:
        return topk_fd(f.fileno(), npy_layout(path), queries, k, chunk_rows, progress, path)


def pread_into(fd: int, out: memoryview, at: int) -> int:
    """Fill `out` from byte `at` of `fd` (short only at the end of the file); bytes read."""
    got = 0
    while got < len(out):
        n = os.preadv(fd, [out[got:]], at + got)
        if n == 0:
            break
        got += n
    return got


def topk_fd(
    fd: int, layout: tuple, queries: Tensor, k: int, chunk_rows: int = CHUNK_ROWS, progress=None, name: Any = "rows"
) -> tuple[Tensor, Tensor]:
    """`topk_file` on an open rows file (`fd`, its `npy_layout`): positioned reads (pread), so threads
    may share the fd, and a reader keeps scanning the file it opened after a writer replaced the name."""
    offset, shape, dtype = layout
    n, d = shape
    if queries.shape[-1] != d:
        raise ValueError(f"{name}: rows have dim {d}, the query has {queries.shape[-1]} (another model?)")
    q = queries.float().reshape(-1, d)
    best: list = [None] * len(q)
    buf = np.empty((min(chunk_rows, max(n, 1)), d), dtype=dtype)
    row_bytes = d * np.dtype(dtype).itemsize
    for s in range(0, n, chunk_rows):
        view = buf[: min(chunk_rows, n - s)]
        if pread_into(fd, memoryview(view).cast("B"), offset + s * row_bytes) != view.nbytes:
            raise ValueError(f"{name}: truncated at row {s} (expected {n} rows)")
        for j, (sc, ids) in enumerate(_chunk_candidates(torch.from_numpy(view), q, k, _floors(best, k))):
            best[j] = _merge(best[j], sc, ids + s, k)
        if progress is not None:
            progress(len(view))
    return _stack(best, len(q))
