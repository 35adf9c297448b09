"""FLOPs of a SigLIP training step, the hardware's matmul peak, and model FLOPs utilisation (MFU).

MFU = (model FLOPs per step x steps per second) / peak FLOP/s, as in PaLM (Chowdhery et al. 2022):
the FLOPs the maths needs, not what the hardware ran (activation checkpointing's recompute is not
counted, nor anything elementwise).

What is counted, for a tower of width d, depth D, MLP size m, on l tokens (one multiply-add = 2 FLOPs):
- per block: the q, k, v, out projections 2 * l * 4 d^2, the MLP 2 * l * 2 d m, and attention
  (q k^T and the weighted sum of v) 2 * 2 * l^2 d;
- image tower: the patch embedding 2 * P * (3 p^2) d (P = (S / p)^2 patches), D blocks on P tokens,
  the MAP head (q and out projections and the MLP on its one probe token, k and v projections on the
  P tokens, attention 2 * 2 * P d);
- text tower: D blocks on L tokens, the head 2 * d * out_dim on the last token (embedding lookups
  are free);
- backward = 2 x forward, except the patch embedding: the pixels need no gradient, so only its
  weight gradient (1 x forward) is computed;
- the loss (sigmoid or softmax): logits 2 n N d' plus their two gradients, 6 n N d' in all, for a
  rank with n pairs in a global batch of N, embedding size d' (the tiles make the same three
  products, `siglip.loss`).
For B/16-224 (L = 64) this is 46.4 GFLOP per pair forward (35.4 image, 11.0 text) and 139.1
GFLOP per training pair.
`tests/test_flops.py` checks the formula against torch's FlopCounterMode on a small model.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from .config import ModelConfig, TowerConfig


def block_flops(tower: TowerConfig, tokens: int) -> int:
    """Forward FLOPs of one pre-LN transformer block on `tokens` tokens (one sample)."""
    d, m = tower.width, tower.mlp_dim
    return 2 * tokens * (4 * d * d + 2 * d * m) + 4 * tokens * tokens * d


def patch_embed_flops(cfg: ModelConfig) -> int:
    """Forward FLOPs of the patch embedding (a Conv2d with kernel = stride = patch), one image."""
    patches = (cfg.image_size // cfg.patch_size) ** 2
    return 2 * patches * 3 * cfg.patch_size**2 * cfg.image.width


def image_flops(cfg: ModelConfig) -> int:
    """Forward FLOPs of the image tower for one image."""
    t, d, m = cfg.image, cfg.image.width, cfg.image.mlp_dim
    patches = (cfg.image_size // cfg.patch_size) ** 2
    head = 2 * (2 * d * d) + 2 * patches * 2 * d * d + 4 * patches * d + 2 * 2 * d * m  # MAP head: 1 query
    return patch_embed_flops(cfg) + t.depth * block_flops(t, patches) + head


def text_flops(cfg: ModelConfig) -> int:
    """Forward FLOPs of the text tower for one text of `cfg.text_length` tokens."""
    head = 2 * cfg.text.width * cfg.out_dim if cfg.text_head else 0
    return cfg.text.depth * block_flops(cfg.text, cfg.text_length) + head


def loss_flops(n_local: int, n_global: int, dim: int) -> int:
    """Forward + backward FLOPs of the sigmoid (or softmax) loss on one rank: 3 products of
    (n_local, dim) x (dim, n_global)."""
    return 6 * n_local * n_global * dim


def train_step_flops(cfg: ModelConfig, n_local: int, n_global: int | None = None) -> int:
    """Model FLOPs of one training step on one rank: forward + backward of both towers on its
    `n_local` pairs, and the loss over the global batch (`n_global`, default n_local)."""
    per_pair = 3 * (image_flops(cfg) + text_flops(cfg)) - patch_embed_flops(cfg)  # no pixel gradient
    return n_local * per_pair + loss_flops(n_local, n_global or n_local, cfg.out_dim)


# --------------------------------------------------------------------------------------------------
# The peak: a large matmul, measured once per machine, dtype and thread count, then cached


def device_name(device: torch.device) -> str:
    """A key for the cache: the GPU's name, or the CPU's model and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} x{torch.get_num_threads()} threads"


def _matmul_kernels(device: torch.device, dtype: torch.dtype, size: int) -> list:
    """The square products to time: torch's matmul, and on a CPU with oneDNN also its pre-packed
    linear (the kernel `siglip.inference` runs), whichever is faster being the machine's peak."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    kernels = [lambda: a @ b]
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(b)
            torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
            kernels.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
        except (RuntimeError, AttributeError):  # no oneDNN kernel for this dtype here
            pass
    return kernels


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 0, seconds: float = 1.0) -> float:
    """Best TFLOP/s of a (size, size) @ (size, size) product over about `seconds` (size 0 = 8192 on
    a GPU, 2048 on a CPU), the kernels taking turns. The best, not the median: the peak is what the
    hardware can do, and a shared machine only ever makes a measurement slower."""
    size = size or (8192 if device.type == "cuda" else 2048)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    kernels = _matmul_kernels(device, dtype, size)
    for k in kernels:  # warm-up: kernel choice, page faults
        k()
    sync()
    calls = 4 if device.type == "cuda" else 1
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds or best == float("inf"):
        for k in kernels:
            t0 = time.perf_counter()
            for _ in range(calls):
                k()
            sync()
            best = min(best, (time.perf_counter() - t0) / calls)
    return 2 * size**3 / best / 1e12


def cache_file() -> Path:
    """$SIGLIP_CACHE/peak_tflops.json, else ~/.cache/siglip/peak_tflops.json."""
    root = os.environ.get("SIGLIP_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "siglip"
    return Path(root) / "peak_tflops.json"


CACHE_DAYS = 30  # a cached peak older than this is measured again


def peak_tflops(device: torch.device, dtype: torch.dtype, given: float = 0.0, fresh: bool = False) -> float:
    """The matmul peak in TFLOP/s for MFU: `given` when > 0 (e.g. the data sheet's 989 for an H100
    in bf16), else measured, cached per device name, dtype and torch version. The cache keeps the
    best measurement so far (one taken while the machine was busy reads low, and later ones replace
    it) and is measured again after `CACHE_DAYS` days, or now with `fresh` (the benchmarks: a peak
    measured in the same run as what it divides)."""
    if given > 0:
        return given
    key = f"{device_name(device)} | {str(dtype).removeprefix('torch.')} | torch {torch.__version__}"
    path = cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key)
    if isinstance(entry, (int, float)):  # the older format: a bare number, of unknown age
        entry = {"tflops": float(entry), "measured": 0.0}
    if entry and not fresh and time.time() - entry.get("measured", 0.0) < CACHE_DAYS * 86400:
        return entry["tflops"]
    now = round(measure_matmul_tflops(device, dtype), 4)
    best = max(now, entry["tflops"]) if entry and fresh else now  # an expired entry is replaced
    cached[key] = {"tflops": best, "measured": time.time(), "last": now}
    write_cache(path, cached)
    return now if fresh else best


def write_cache(path: Path, cached: dict) -> None:
    """A cache file (JSON) replaced whole by a rename; a read-only home only loses the cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=1))
        tmp.replace(path)
    except OSError:
        pass


def mfu(flops_per_step: float, steps_per_s: float, peak: float) -> float:
    """Model FLOPs utilisation in [0, 1]: achieved FLOP/s over the peak (`peak` in TFLOP/s)."""
    return flops_per_step * steps_per_s / (peak * 1e12)
