"""What checking a model file before loading costs: a B/16 model file (812 MB, random weights) loaded
with `torch.load` alone and with the checks `siglip` runs first, in one process, alternating, medians.

    python benchmarks/load_check.py                    # builds /tmp/siglip_bench_load/siglip_b16.pt, deletes it after
    python benchmarks/load_check.py --repeats 9 --json
    -> per method: median seconds, and the check's cost as a share of the load:
       torch.load                the load alone (weights_only=True): a file loaded without any check
       load_checked              siglip.zipcheck.load_checked: every record's CRC-32 checked (a memory map of the
                                 file), then the load; what a copy without .sha256 gets. ISA-L's CRC where
                                 `isal` is installed (siglip[fastcrc]), else zlib's
       load_checked (zlib)       the same with zlib's CRC: a core install without isal
       CRC check alone           siglip.zipcheck.check_zip_crcs, default CRC
       sha256 sidecar            verify_digest: what a file with its .sha256 beside it is checked with
       siglip.load               the whole user-facing load without the sidecar (model built, CRC checked)

The first round warms the page cache and is not counted; every later round runs each method once,
in an order that rotates. Target: load_checked under 15% above torch.load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from siglip.checkpoint import atomic_save, digest_path, model_payload, verify_digest  # noqa: E402
from siglip.config import ModelConfig  # noqa: E402
from siglip.model import SigLIP  # noqa: E402
from siglip.tokenizer import Tokenizer  # noqa: E402
from siglip.zipcheck import FAST_CRC32, check_zip_crcs, load_checked  # noqa: E402


def build(path: Path, variant: str) -> None:
    """Our model file for `variant` with random weights (no init: randn straight into each shape)."""
    with torch.device("meta"):
        model = SigLIP(ModelConfig.from_variant(variant))
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=g) * 0.02 for k, v in model.state_dict().items()}
    tok = Tokenizer.train(["a photo of a cat", "a dog on grass", "two green triangles"] * 4, 32, 64)
    atomic_save(model_payload(model, tok, "bicubic", state_dict=sd), path)


def methods_for(path: Path) -> dict:
    """name -> a call that loads or checks `path` once (the sidecar removed or put back as needed)."""
    import siglip

    side = digest_path(path)
    if not side.is_file():
        raise SystemExit(f"{side} is missing: delete {path} to build it again")
    digest = side.read_text()

    def sha256() -> None:
        side.write_text(digest)
        verify_digest(path)

    def siglip_load() -> None:
        side.unlink(missing_ok=True)  # a copy without its sidecar: the CRC check runs
        siglip.load(path)
        side.write_text(digest)

    return {
        "torch.load": lambda: torch.load(path, map_location="cpu", weights_only=True),
        "load_checked": lambda: load_checked(path),
        "load_checked (zlib)": lambda: load_checked(path, zlib.crc32),
        "CRC check alone": lambda: check_zip_crcs(path),
        "sha256 sidecar": sha256,
        "siglip.load": siglip_load,
    }


def medians(methods: dict, repeats: int) -> dict[str, float]:
    """Median seconds per method over `repeats` rounds after a warm-up round; the order rotates."""
    times: dict[str, list[float]] = {m: [] for m in methods}
    names = list(methods)
    for r in range(repeats + 1):
        print(f"round {r}/{repeats}{' (warm-up)' if r == 0 else ''}", file=sys.stderr, flush=True)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            methods[name]()
            if r:
                times[name].append(time.perf_counter() - t)
    return {m: statistics.median(ts) for m, ts in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="B/16")
    p.add_argument("--repeats", type=int, default=7, help="counted rounds (after one warm-up round)")
    p.add_argument("--dir", default="/tmp/siglip_bench_load")
    p.add_argument("--keep", action="store_true", help="keep the model file for the next run")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = p.parse_args(argv)
    path = Path(args.dir) / f"siglip_{args.variant.replace('/', '')}.pt"
    if not path.is_file():
        print(f"writing {path} ({args.variant}, random weights) ...", file=sys.stderr, flush=True)
        build(path, args.variant)
    med = medians(methods_for(path), args.repeats)
    load, crc = med["torch.load"], med["CRC check alone"]
    out = {
        "file_mb": round(path.stat().st_size / 1e6),
        "variant": args.variant,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "crc_impl": "isal" if FAST_CRC32 else "zlib",
        "median_s": {m: round(v, 4) for m, v in med.items()},
        "load_checked_over_torch_load": round(med["load_checked"] / load - 1, 4),
        "load_checked_zlib_over_torch_load": round(med["load_checked (zlib)"] / load - 1, 4),
        "crc_share_of_torch_load": round(crc / load, 4),
        "crc_share_of_siglip_load_without_it": round(crc / (med["siglip.load"] - crc), 4),
        "sha256_share_of_torch_load": round(med["sha256 sidecar"] / load, 4),
    }
    if not args.keep:
        path.unlink()
        digest_path(path).unlink(missing_ok=True)
    if args.json:
        print(json.dumps(out))
        return
    print(f"{args.variant} model file {out['file_mb']} MB, {args.repeats} rounds (+1 warm-up), {out['cpus']} CPUs")
    for m, v in med.items():
        print(f"{m:<24} median {v:7.3f} s")
    pct = lambda k: f"{100 * out[k]:.1f}%"
    print(
        f"load_checked = torch.load +{pct('load_checked_over_torch_load')} ({out['crc_impl']} CRC), "
        f"+{pct('load_checked_zlib_over_torch_load')} (zlib CRC); the check alone = "
        f"{pct('crc_share_of_torch_load')} of torch.load, {pct('crc_share_of_siglip_load_without_it')} of "
        f"siglip.load without it; the sha256 sidecar = {pct('sha256_share_of_torch_load')} of torch.load"
    )


if __name__ == "__main__":
    main()
