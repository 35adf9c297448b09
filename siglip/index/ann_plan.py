"""Which approximate index to build, and its parameters, from the row count, the dimension and a memory
budget (the rule autofaiss follows): no faiss here, only arithmetic.

    auto:  count < 100k rows                      -> flat (exact, float32 in RAM)
           IVF with float32 rows fits the budget  -> ivf-flat
           otherwise                              -> ivf-pq, with the most PQ code bytes per row that fit

Sizes (bytes, n rows of d dims): flat 4dn; ivf-flat (4d + 8)n; ivf-pq (m + 8)n (m one-byte codes and
an int64 id per row); hnsw (4d + 8M + 16)n; plus the IVF centroids (4d per list). Lists: about
sqrt(n) / 6, a power of two (fewer than autofaiss's 4 sqrt(n): k-means and assigning every row to its
list are the cost of building on a few cores; queries then visit more of each list).
Every kind fetches `rerank` x k candidates that the exact rows on disk score again.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

KINDS = ("auto", "flat", "ivf-flat", "ivf-pq", "hnsw")
FLAT_BELOW = 100_000  # rows: below this, auto keeps an exact flat index
BUDGET_USE = 0.85  # share of --max-memory the index itself may take (the rest: query buffers)
TRAIN_PER_LIST = 40  # k-means sample: rows per list (faiss asks for at least 39)
TRAIN_MAX = 131_072


@dataclass
class Plan:
    """An approximate index's recipe; `nprobe` is the IVF lists visited (HNSW: efSearch)."""

    kind: str
    nlist: int = 0
    m: int = 0  # PQ code bytes per row (ivf-pq)
    hnsw: int = 0  # graph degree: kind hnsw, or the IVF quantizer when > 0
    train_rows: int = 0
    nprobe: int = 1
    rerank: int = 2  # candidates fetched per result, re-scored with the exact rows

    def factory(self) -> str:
        """faiss.index_factory's description string."""
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw}"
        ivf = f"IVF{self.nlist}" + (f"_HNSW{self.hnsw}" if self.hnsw else "")
        return f"{ivf},PQ{self.m}np" if self.kind == "ivf-pq" else f"{ivf},Flat"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Plan:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def parse_size(text: str | int) -> int:
    """'4G', '512M', '2GB', '1.5g', '123456' (bytes) -> bytes (powers of 1024)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not m:
        raise ValueError(f"--max-memory {text!r}: expected a size such as 4G, 512M or 2GB")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def fmt_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def estimate_bytes(plan: Plan, n: int, d: int) -> int:
    """RAM the index takes once built (codes, ids, centroids, graphs), in bytes."""
    centroids = plan.nlist * (4 * d + 8 * plan.hnsw * 2)
    if plan.kind == "flat":
        return 4 * d * n
    if plan.kind == "hnsw":
        return (4 * d + 8 * plan.hnsw + 16) * n
    if plan.kind == "ivf-flat":
        return (4 * d + 8) * n + centroids
    return (plan.m + 8) * n + centroids + 256 * 4 * d  # + the PQ codebooks


PQ_MAX = 128  # code bytes per row: more makes each list scan slower for little recall after re-ranking
FAST_ENCODE_DSUB = 16  # faiss encodes PQ codes with BLAS only from 16 dims a byte; under it, per row (slow)
SLOW_ENCODE_MAX = 2e8  # rows x dims up to which the slow per-row encoding is still quick (seconds)


def pq_sizes(d: int, n: int = 0) -> list[int]:
    """Code bytes per row faiss's 8-bit PQ allows at dim d (m divides d; at least 2 dims a byte), largest
    first; for many rows only those with >= 16 dims a byte, which faiss encodes with BLAS (fewer dims a
    byte encode ~5x slower: a 10M x 768 build would take hours on a few cores)."""
    sizes = [m for m in range(min(d // 2, PQ_MAX), 0, -1) if d % m == 0]
    if n * d > SLOW_ENCODE_MAX:
        sizes = [m for m in sizes if d // m >= FAST_ENCODE_DSUB] or sizes[-1:]
    return sizes


def _nlist(n: int) -> int:
    lists = 2 ** round(math.log2(max(math.sqrt(n) / 6, 1)))
    return max(1, min(lists, n // 39 or 1))


def _ivf(kind: str, n: int, d: int, m: int = 0) -> Plan:
    nlist = _nlist(n)
    plan = Plan(kind, nlist=nlist, m=m)
    plan.train_rows = min(n, max(TRAIN_PER_LIST * nlist, 256 * 39 if kind == "ivf-pq" else 0), TRAIN_MAX)
    plan.nprobe = max(1, nlist // 64)
    plan.rerank = 10 if kind == "ivf-pq" else 2
    return plan


def choose(n: int, d: int, max_memory: int, kind: str = "auto") -> Plan:
    """The plan for `n` rows of `d` dims under `max_memory` bytes; `kind` forces the family."""
    if kind not in KINDS:
        raise ValueError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}")
    if n < 1:
        raise ValueError("the index has no rows yet: run siglip embed first")
    budget = int(max_memory * BUDGET_USE)
    fits = lambda p: estimate_bytes(p, n, d) <= budget
    if kind == "flat" or (kind == "auto" and n < FLAT_BELOW and fits(Plan("flat"))):
        return Plan("flat", rerank=1)
    if kind == "hnsw":
        return Plan("hnsw", hnsw=32, nprobe=64, rerank=2)
    if kind == "ivf-flat" or (kind == "auto" and fits(_ivf("ivf-flat", n, d))):
        return _ivf("ivf-flat", n, d)
    sizes = pq_sizes(d, n)
    for m in sizes:
        plan = _ivf("ivf-pq", n, d, m)
        if fits(plan) or m == sizes[-1] and kind == "ivf-pq":
            return plan
    least = estimate_bytes(_ivf("ivf-pq", n, d, sizes[-1]), n, d)
    raise ValueError(
        f"--max-memory {fmt_size(max_memory)}: even the smallest codes ({sizes[-1]} bytes a row) need "
        f"{fmt_size(least / BUDGET_USE)} for {n} rows; raise --max-memory or shard the rows"
    )
