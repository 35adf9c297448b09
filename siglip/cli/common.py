"""What the subcommands share: the model flags, loading, output helpers."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from siglip.api import DTYPES, Model, load


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        required=required,
        help="checkpoint: our .pt, a Hugging Face SigLIP folder, an open_clip checkpoint, a big_vision .npz, "
        "or a Hub id (org/name, org/name@revision, hf-hub:org/name)",
    )
    g.add_argument(
        "--tokenizer",
        default=None,
        help="a SentencePiece model or tokenizer.json, a folder holding one, or a Hub id (its tokenizer files "
        "alone), when none lies beside the weights",
    )
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="weights' dtype (default: as stored)")
    g.add_argument("--batch-size", type=int, default=64)


def load_model(args: argparse.Namespace, path: str | None = None, device: str | None = None) -> Model:
    dev = device or args.device
    return load(path or args.model, device=dev, dtype=args.dtype, tokenizer=args.tokenizer)


def read_list(text: str, file: str, what: str) -> list[str]:
    """Comma-separated `text` or one entry per line of `file` (blank lines skipped)."""
    if file:
        p = Path(file)
        if not p.is_file():
            raise FileNotFoundError(f"{what} file not found: {p}")
        out = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        out = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not out:
        raise ValueError(f"no {what} given")
    return out


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=1)
    sys.stdout.write("\n")


def write_csv(path: str, header: list[str], rows: list[list]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    tmp.replace(p)
