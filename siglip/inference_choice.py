"""Which CPU path embeds faster here: the packed towers of `siglip.inference` or the module itself.

The packed copy is not faster on every CPU: it was 1.4x the module in bf16 and 1.2x in fp32 on an
AVX-512 bf16 CPU, but slower in fp32 on an AVX2-only one (0.46 against 0.54 img/s). So on the first
call of a tower in a dtype, both paths are timed on the first rows of that call's batch (`ROWS`
rows of the real input shapes: one warm-up and `CALLS` timed calls each, taking turns, the best
of each kept), the faster is used from then on and logged, and the result is cached per CPU model
(and torch's thread count), tower, dtype and torch version: in this process, and in
`$SIGLIP_CACHE/packed_choice.json` (else ~/.cache/siglip/, beside the matmul peak of
`siglip.flops`), so later processes on the same CPU do not time again for `CACHE_DAYS` days.

Towers under `MIN_PARAMS` parameters (the test and demo models) are not timed: a call takes
milliseconds either way, so timing would cost more than any choice could save; they run packed.
`SIGLIP_PACKED=1` in the environment forces the packed copy and `SIGLIP_PACKED=0` the module, with
no timing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from siglip import flops

log = logging.getLogger("siglip.inference")

MIN_PARAMS = 5_000_000  # smaller towers are not timed (packed)
ROWS = 2  # rows of the first batch the paths are timed on
CALLS = 2  # timed calls per path, after one warm-up each
CACHE_DAYS = 30  # a cached choice older than this is timed again
_CHOSEN: dict[str, bool] = {}  # key -> packed is faster, for this process


def forced() -> bool | None:
    """SIGLIP_PACKED=1: True (always packed), 0: False (always the module), unset: None (timed)."""
    return {"0": False, "1": True}.get(os.environ.get("SIGLIP_PACKED", "").strip())


_CPU: dict[int, str] = {}  # torch's thread count -> cpu_name()


def cpu_name() -> str:
    """The CPU's model name and torch's thread count (as the matmul peak's cache is keyed)."""
    threads = torch.get_num_threads()
    if threads not in _CPU:
        _CPU[threads] = flops.device_name(torch.device("cpu"))
    return _CPU[threads]


def choice_key(tower: nn.Module, dtype: torch.dtype) -> str:
    """CPU | tower (class and size) | dtype | torch version."""
    size = sum(p.numel() for p in tower.parameters()) / 1e6
    tower_name = f"{type(tower).__name__} {size:.0f}M"
    return f"{cpu_name()} | {tower_name} | {str(dtype).removeprefix('torch.')} | torch {torch.__version__}"


def cache_file() -> Path:
    return flops.cache_file().with_name("packed_choice.json")


def _read_cache() -> dict:
    try:
        cached = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


def _write_cache(key: str, entry: dict) -> None:
    cached = _read_cache()
    cached[key] = entry
    flops.write_cache(cache_file(), cached)


def time_paths(module: Callable[[], Tensor], packed: Callable[[], Tensor], calls: int = CALLS) -> tuple[float, float]:
    """Best seconds per call of `module()` and of `packed()`: one warm-up each (oneDNN picks its
    kernels, memory is touched), then `calls` calls each, taking turns so that a busy moment of a
    shared machine falls on both."""
    module(), packed()
    best = [float("inf"), float("inf")]
    for _ in range(calls):
        for i, fn in enumerate((module, packed)):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def _first_rows(inputs: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
    return tuple(None if x is None else x[:ROWS] for x in inputs)


def decided(tower: nn.Module, dtype: torch.dtype) -> bool | None:
    """Whether the packed copy of `tower` in `dtype` should run here, where that is known without
    timing (forced, a small tower, timed in this process or cached): True or False; else None."""
    force = forced()
    if force is not None:
        return force
    if sum(p.numel() for p in tower.parameters()) < MIN_PARAMS:
        return True
    key = choice_key(tower, dtype)
    if key not in _CHOSEN:
        entry = _read_cache().get(key)
        if not (isinstance(entry, dict) and time.time() - entry.get("measured", 0.0) < CACHE_DAYS * 86400):
            return None
        _CHOSEN[key] = bool(entry["packed"])
        log.debug("%s: the %s (cached in %s)", key, "packed copy" if entry["packed"] else "module", cache_file())
    return _CHOSEN[key]


def measure(tower: nn.Module, packed: nn.Module, dtype: torch.dtype, inputs: tuple[Tensor | None, ...]) -> bool:
    """Time `tower` against `packed` (its packed copy in `dtype`) on the first rows of `inputs`,
    keep, cache and log the choice, and return it: True where the packed copy is faster. Without
    inputs (nothing to time on): True, and nothing is kept."""
    if not inputs or inputs[0] is None:
        return True
    rows = _first_rows(inputs)
    with torch.no_grad():
        t_module, t_packed = time_paths(lambda: tower(*rows), lambda: packed(*rows))
    choice = t_packed < t_module
    key = choice_key(tower, dtype)
    _CHOSEN[key] = choice
    _write_cache(key, {"packed": choice, "packed_s": t_packed, "module_s": t_module, "measured": time.time()})
    log.info(
        "%s: packed copy %.3g s, module %.3g s per call of %d rows: using the %s (timed once per CPU; "
        "SIGLIP_PACKED=0/1 forces either)",
        key,
        t_packed,
        t_module,
        len(rows[0]),
        "packed copy" if choice else "module",
    )
    return choice
