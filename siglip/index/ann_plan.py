"""Which approximate index to build, and its parameters, from the row count, the dimension and a memory
budget (the rule autofaiss follows): no faiss here, only arithmetic.

    auto:  count < 100k rows                      -> flat (exact, float32 in RAM)
           IVF with float32 rows fits the budget  -> ivf-flat
           otherwise                              -> ivf-pq, with the most 4-bit PQ codes per row that fit

ivf-pq keeps each row as m 4-bit product-quantizer codes of its residual from its list's centroid
(faiss's "fast scan" layout, `PQ{m}x4fsr`: a list is scanned with SIMD table lookups held in
registers, several times faster per byte than 8-bit codes, and codes of 2-4 dims encode quickly, so a
10M-row build stays in minutes). Codes only order candidates: `rerank` x k of them are scored again
with the exact rows on disk, which is what brings recall back.

Sizes (bytes, n rows of d dims): flat 4dn; ivf-flat (4d + 8)n; ivf-pq (m/2 + 8)n (m 4-bit codes and
an int64 id per row; lists padded to blocks of 32 rows); hnsw (4d + 8M + 16)n; plus the IVF centroids
(4d per list). Lists: about sqrt(n) / 2, a power of two (fewer than autofaiss's 4 sqrt(n): assigning
every row to its list is most of a build on a few cores; queries then visit more of each list).
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
    m: int = 0  # PQ codes per row (ivf-pq), each of `nbits` bits
    hnsw: int = 0  # graph degree: kind hnsw, or the IVF quantizer when > 0
    train_rows: int = 0
    nprobe: int = 1
    rerank: int = 2  # candidates fetched per result, re-scored with the exact rows
    nbits: int = 8  # bits per PQ code: 4 (fast scan) in plans made now; 8 in indexes built before

    def factory(self) -> str:
        """faiss.index_factory's description string."""
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw}"
        ivf = f"IVF{self.nlist}" + (f"_HNSW{self.hnsw}" if self.hnsw else "")
        if self.kind != "ivf-pq":
            return f"{ivf},Flat"
        return f"{ivf},PQ{self.m}x4fsr" if self.nbits == 4 else f"{ivf},PQ{self.m}np"

    @property
    def code_bytes(self) -> int:
        """PQ code bytes per row (ivf-pq)."""
        return (self.m * self.nbits + 7) // 8

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
    padding = plan.nlist * 31 * plan.code_bytes if plan.nbits == 4 else 0  # lists fill blocks of 32 rows
    return (plan.code_bytes + 8) * n + padding + centroids + (1 << plan.nbits) * 4 * d  # + the codebooks


def pq_sizes(d: int) -> list[int]:
    """4-bit PQ codes per row at dim d, most first: m divides d, with at least 2 dims a code (one dim a
    code would be a 4-bit scalar quantizer at twice the scan)."""
    return [m for m in range(max(d // 2, 1), 0, -1) if d % m == 0]


def _nlist(n: int) -> int:
    lists = 2 ** round(math.log2(max(math.sqrt(n) / 2, 1)))
    return max(1, min(lists, n // 39 or 1))


def _ivf(kind: str, n: int, d: int, m: int = 0) -> Plan:
    nlist = _nlist(n)
    plan = Plan(kind, nlist=nlist, m=m, nbits=4 if kind == "ivf-pq" else 8)
    plan.train_rows = min(n, max(TRAIN_PER_LIST * nlist, 16 * 64 if kind == "ivf-pq" else 0), TRAIN_MAX)
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
    sizes = pq_sizes(d)
    for m in sizes:
        plan = _ivf("ivf-pq", n, d, m)
        if fits(plan) or m == sizes[-1] and kind == "ivf-pq":
            return plan
    least = estimate_bytes(_ivf("ivf-pq", n, d, sizes[-1]), n, d)
    raise ValueError(
        f"--max-memory {fmt_size(max_memory)}: even the smallest codes ({(sizes[-1] + 1) // 2} bytes a row) need "
        f"{fmt_size(least / BUDGET_USE)} for {n} rows; raise --max-memory or shard the rows"
    )
