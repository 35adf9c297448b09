"""Everything that touches faiss (the only module that imports it, lazily): create an index from a
`Plan`, train it, add rows, set how hard it searches, search, write and read its file.

faiss is an optional extra: `pip install 'siglip[ann]'` (faiss-cpu; the faiss-gpu package works too,
and there the IVF k-means runs on the GPUs). Rows are unit vectors, so the index uses L2 distance
(`|x - q|^2 = 2 - 2 cos`: the same order as cosine, and faiss's best-supported metric); its distances
only order candidates, the exact cosines come from re-scoring them with the rows on disk.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from siglip.checkpoint import write_atomically
from siglip.index.ann_plan import Plan

READ_BLOCK = 1 << 24


def faiss() -> Any:
    """The faiss module, or an error that says how to install it."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss as f
    except ImportError as e:
        raise ModuleNotFoundError(
            f"approximate indexes need faiss ({e}): pip install 'siglip[ann]'  (faiss-cpu; faiss-gpu works too)"
        ) from None
    return f


def _gpus(f: Any) -> int:
    return f.get_num_gpus() if hasattr(f, "StandardGpuResources") else 0


def create(plan: Plan, d: int) -> Any:
    """An empty (untrained) faiss index for `plan` at dimension `d`."""
    f = faiss()
    index = f.index_factory(d, plan.factory(), f.METRIC_L2)
    ivf = f.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.niter = 10  # k-means iterations: 10 reach most of 25's quality at 40% of the time
        ivf.cp.max_points_per_centroid = max(plan.train_rows // max(plan.nlist, 1) + 1, 39)
        if _gpus(f):  # faiss-gpu: the k-means, the slowest step, on the GPUs
            ivf.clustering_index = f.index_cpu_to_all_gpus(f.IndexFlatL2(d))
    pq = _ivfpq(index)
    if pq is not None:
        pq.use_precomputed_table = -1  # per-list tables (nlist x m x 2^nbits floats): RAM for little speed
        if hasattr(pq, "do_polysemous_training"):  # 8-bit codes (indexes built before fast scan)
            pq.do_polysemous_training = False
        pq.pq.cp.niter = 10
        pq.pq.cp.max_points_per_centroid = 64  # codebooks from a few thousand rows are plenty
    return index


def _ivfpq(index: Any) -> Any:
    f = faiss()
    ivf = f.try_extract_index_ivf(index)
    return f.downcast_index(ivf) if ivf is not None and "PQ" in type(f.downcast_index(ivf)).__name__ else None


def needs_training(index: Any) -> bool:
    return not index.is_trained


def train(index: Any, x: np.ndarray) -> None:
    """Train on the (t, d) float32 sample (IVF centroids, PQ codebooks)."""
    index.train(np.ascontiguousarray(x, dtype=np.float32))


def add(index: Any, x: np.ndarray) -> None:
    """Append (m, d) rows; faiss numbers them from its count, so rows keep their index row ids."""
    index.add(np.ascontiguousarray(x, dtype=np.float32))


def count(index: Any) -> int:
    return int(index.ntotal)


def configure(index: Any, plan: Plan) -> None:
    """How hard a search works: IVF lists visited (`nprobe`) or HNSW's efSearch."""
    f = faiss()
    ivf = f.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(plan.nprobe, ivf.nlist)
        quantizer = f.downcast_index(ivf.quantizer)
        if hasattr(quantizer, "hnsw"):  # the graph must return at least nprobe lists, and good ones
            quantizer.hnsw.efSearch = max(64, 2 * ivf.nprobe)
    elif hasattr(f.downcast_index(index), "hnsw"):
        f.downcast_index(index).hnsw.efSearch = plan.nprobe


def search(index: Any, q: np.ndarray, n: int) -> np.ndarray:
    """Ids (q, n) int64 of the n nearest rows of each (q, d) query, -1 where fewer were found."""
    _, ids = index.search(np.ascontiguousarray(q, dtype=np.float32), n)
    return ids


def memory_bytes(index: Any) -> int:
    """Bytes the index holds: codes and ids (or float32 rows and graph), centroids."""
    f = faiss()
    ivf = f.try_extract_index_ivf(index)
    if ivf is None:
        inner = f.downcast_index(index)
        graph = inner.hnsw.neighbors.size() * 4 + inner.hnsw.levels.size() * 4 if hasattr(inner, "hnsw") else 0
        return int(index.ntotal) * index.d * 4 + graph
    lists = ivf.invlists
    sizes = np.array([lists.list_size(i) for i in range(ivf.nlist)], dtype=np.int64)
    inner = f.downcast_index(ivf)
    if hasattr(inner, "bbs"):  # fast scan: codes packed in blocks of bbs rows, M2 (m rounded up even) codes
        codes = int((-(-sizes // inner.bbs) * inner.bbs).sum()) * inner.M2 * inner.pq.nbits // 8
    else:
        codes = int(sizes.sum()) * ivf.code_size
    return codes + int(sizes.sum()) * 8 + _quantizer_bytes(f, ivf) + _pq_bytes(ivf)


def _quantizer_bytes(f: Any, ivf: Any) -> int:
    q = f.downcast_index(ivf.quantizer)
    graph = q.hnsw.neighbors.size() * 4 if hasattr(q, "hnsw") else 0
    return int(q.ntotal) * q.d * 4 + graph


def _pq_bytes(ivf: Any) -> int:
    """The codebooks, and per-list distance tables where faiss keeps them."""
    inner = faiss().downcast_index(ivf)
    pq = getattr(inner, "pq", None)
    if pq is None:
        return 0
    table = getattr(inner, "precomputed_table", None)
    return pq.centroids.size() * 4 + (table.size() * 4 if table is not None else 0)


def write(index: Any, path: Path) -> int:
    """Write atomically; returns the CRC-32 of the bytes written (ann.json keeps it)."""
    f = faiss()
    crc = 0

    def body(out) -> None:
        def put(b: bytes) -> int:
            nonlocal crc
            crc = zlib.crc32(b, crc)
            out.write(b)
            return len(b)

        f.write_index(index, f.PyCallbackIOWriter(put))

    write_atomically(Path(path), body)
    return crc


def file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(READ_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


def read(path: Path, crc: int | None = None) -> Any:
    """Read an index file; a damaged one (CRC-32 other than ann.json's, or unreadable) is a ValueError
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: the approximate index file is missing")
    if crc is not None and file_crc(path) != crc:
        raise ValueError(f"{path}: damaged (its CRC-32 differs from the one ann.json recorded)")
    f = faiss()
    try:
        index = f.read_index(str(path))
    except RuntimeError as e:
        raise ValueError(f"{path}: not a readable faiss index ({str(e).splitlines()[0][:200]})") from None
    pq = _ivfpq(index)
    if pq is not None:
        pq.use_precomputed_table = -1
        pq.precompute_table()  # frees a table read_index may have built
    return index
