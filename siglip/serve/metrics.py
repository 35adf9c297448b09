"""Prometheus metrics in the text exposition format (version 0.0.4), kept in plain dicts.

    siglip_requests_total{route,method,status}       counter
    siglip_request_seconds{route}                    histogram of request latency
    siglip_batch_size{kind}                          histogram of inputs per model call
    siglip_batch_requests{kind}                      histogram of requests per model call
    siglip_queue_depth                               gauge: requests waiting for the model
    siglip_index_rows{index}                         gauge: rows per served index

Every label comes from a fixed set, so the number of series stays bounded whatever clients send:
`route` is the route's template (`/items/{index}/{row}/thumbnail`), never the raw path, and "other"
for any path that matched no route; `method` is one of METHODS or "other" (HTTP lets a client invent
methods: `XMETHOD1`, `XMETHOD2`, ...); `status` is a three-digit code or "other".
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total, self.n = 0.0, 0

    def observe(self, value: float) -> None:
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{edge:g}"}} {c}' for edge, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        brace = f"{{{labels}}}" if labels else ""
        return out + [f"{name}_sum{brace} {self.total:.6f}", f"{name}_count{brace} {self.n}"]


class Metrics:
    """Thread-safe counters and histograms; `render()` is the /metrics body."""

    def __init__(self, queue_depth: Callable[[], int] = lambda: 0, index_rows: dict[str, int] | None = None):
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = defaultdict(lambda: Histogram(LATENCY_BUCKETS))
        self.batch_size: dict[str, Histogram] = defaultdict(lambda: Histogram(BATCH_BUCKETS))
        self.batch_requests: dict[str, Histogram] = defaultdict(lambda: Histogram(BATCH_BUCKETS))
        self.queue_depth, self.index_rows = queue_depth, index_rows or {}
        self._lock = threading.Lock()

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """`route`: a route template or "other"; an unknown `method` or `status` is counted as "other"."""
        method = method if method in METHODS else "other"
        code = str(status) if 100 <= status <= 599 else "other"
        with self._lock:
            self.requests[(route, method, code)] += 1
            self.latency[route].observe(seconds)

    def batch(self, kind: str, inputs: int, requests: int) -> None:
        with self._lock:
            self.batch_size[kind].observe(inputs)
            self.batch_requests[kind].observe(requests)

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP siglip_requests_total HTTP requests answered.", "# TYPE siglip_requests_total counter"]
            for (route, method, status), n in sorted(self.requests.items()):
                lines.append(f'siglip_requests_total{{route="{_esc(route)}",method="{method}",status="{status}"}} {n}')
            lines += _histograms("siglip_request_seconds", "Request latency in seconds.", "route", self.latency)
            lines += _histograms("siglip_batch_size", "Inputs per model call.", "kind", self.batch_size)
            lines += _histograms("siglip_batch_requests", "Requests per model call.", "kind", self.batch_requests)
        lines += ["# HELP siglip_queue_depth Requests waiting for the model.", "# TYPE siglip_queue_depth gauge"]
        lines.append(f"siglip_queue_depth {self.queue_depth()}")
        lines += ["# HELP siglip_index_rows Rows per served index.", "# TYPE siglip_index_rows gauge"]
        lines += [f'siglip_index_rows{{index="{_esc(name)}"}} {n}' for name, n in self.index_rows.items()]
        return "\n".join(lines) + "\n"


def _histograms(name: str, help: str, label: str, table: dict[str, Histogram]) -> list[str]:
    lines = [f"# HELP {name} {help}", f"# TYPE {name} histogram"]
    for key, h in sorted(table.items()):
        lines += h.lines(name, f'{label}="{_esc(key)}"')
    return lines


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
