"""The bundled demo data: the 1,797 handwritten digits (8x8 scans, 10 classes) that scikit-learn
ships inside its package, written to disk as image-caption pairs. Nothing is downloaded.

`ensure_digits(root)` writes, once:
    root/train/NNNN.png + root/train.csv       (image,caption; captions from varied templates)
    root/heldout/<class name>/NNNN.png         (one folder per class: the zero-shot layout)
    root/heldout.csv                           (image,caption for the held-out images)
The split is fixed: a seeded permutation, the last 20% held out.

`write_wds(out, templates)` writes the same split as two CLIP_benchmark webdataset sets (shards only):
    out/digits/{train,test}/0.tar (+ nshards.txt), classnames.txt, zeroshot_classification_templates.txt
        (PNG + .cls: zero-shot and few-shot)
    out/digits_captions/test/0.tar (+ nshards.txt), dataset_type.txt = retrieval   (PNG + .txt: retrieval)
    python evaluation/digits_wds.py data/digits_wds

`write_digits_parquet(root, out)` (or `python -m siglip.data.digits --parquet OUT`) writes the same
pairs as out/train.parquet and out/heldout.parquet, as the Hugging Face Hub keeps image datasets: the
`datasets` Image struct {bytes, path} with the PNG inside, caption, and a ClassLabel `label`.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.resources
import io
import json
import os
import random
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

# Class names, in label order; the held-out folders are named by them.
DIGITS_CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

VERSION = "1"
HELDOUT_FRACTION = 0.2
PIXELS = 32  # written size; the 8x8 scans are upsampled so the files look like small images

CAPTION_TEMPLATES = [
    "a handwritten {w}",
    "the digit {w} written by hand",
    "a scan of the number {n}",
    "handwritten number {n}",
    "{w} drawn with a pen",
    "a small grayscale image of a {w}",
    "someone wrote the digit {w}",
    "a blurry {w} on paper",
    "digit {n}",
    "the numeral {w}, scanned",
    "a {w}",
    "number {w}",
]


def load_digits_array() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) uint8 ink levels 0..16 and (1797,) labels, read from scikit-learn's data file."""
    try:
        ref = importlib.resources.files("sklearn.datasets") / "data" / "digits.csv.gz"
    except ModuleNotFoundError:
        raise ImportError("the bundled demo data are scikit-learn's digits: pip install 'siglip[demo]'") from None
    with ref.open("rb") as raw, gzip.open(raw, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :64].reshape(-1, 8, 8).astype(np.uint8), table[:, 64]


def split_indices(n: int) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(0).shuffle(order)
    cut = n - int(round(n * HELDOUT_FRACTION))
    return sorted(order[:cut]), sorted(order[cut:])


def caption_for(index: int, label: int) -> str:
    rng = random.Random(1_000 + index)
    return rng.choice(CAPTION_TEMPLATES).format(w=DIGITS_CLASSNAMES[label], n=label)


def _to_image(scan: np.ndarray) -> Image.Image:
    ink = (255 - scan.astype(np.float32) * (255 / 16)).astype(np.uint8)  # dark ink on white paper
    return Image.fromarray(ink, mode="L").resize((PIXELS, PIXELS), Image.Resampling.BILINEAR)


def ensure_digits(root: str | Path) -> Path:
    """Write the demo data under `root` unless a complete copy is already there. Returns `root`."""
    root = Path(root)
    marker = root / ".complete"
    if marker.is_file() and marker.read_text().strip() == VERSION:
        return root
    images, labels = load_digits_array()
    train, heldout = split_indices(len(labels))
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "train").mkdir(parents=True)
    for name in DIGITS_CLASSNAMES:
        (tmp / "heldout" / name).mkdir(parents=True)
    for split, indices in (("train", train), ("heldout", heldout)):
        with open(tmp / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption"])
            for i in indices:
                label = int(labels[i])
                rel = f"train/{i:04d}.png" if split == "train" else f"heldout/{DIGITS_CLASSNAMES[label]}/{i:04d}.png"
                _to_image(images[i]).save(tmp / rel)
                w.writerow([rel, caption_for(i, label)])
    (tmp / ".complete").write_text(VERSION)
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    return root


def train_labels(root: str | Path) -> tuple[list[str], list[int]]:
    """The training images (written by `ensure_digits`) with their labels: (paths, labels)."""
    root = ensure_digits(root)
    _, labels = load_digits_array()
    train, _ = split_indices(len(labels))
    return [str(root / "train" / f"{i:04d}.png") for i in train], [int(labels[i]) for i in train]


def _write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, parts in samples:
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (path.parent / "nshards.txt").write_text("1\n")


def _png(scan: np.ndarray) -> bytes:
    buf = io.BytesIO()
    _to_image(scan).save(buf, format="PNG")
    return buf.getvalue()


def write_wds(out: str | Path, templates: list[str]) -> Path:
    """The digits as CLIP_benchmark's webdataset sets under `out` (see the module docstring), with
    the zero-shot `templates` (ours, `{}` for the class name; written with clip_benchmark's `{c}`)."""
    out = Path(out)
    images, labels = load_digits_array()
    train, heldout = split_indices(len(labels))
    for split, indices in (("train", train), ("test", heldout)):
        samples = [(f"{i:04d}", {"png": _png(images[i]), "cls": str(int(labels[i])).encode()}) for i in indices]
        _write_shard(out / "digits" / split / "0.tar", samples)
    (out / "digits" / "classnames.txt").write_text("\n".join(DIGITS_CLASSNAMES) + "\n")
    templates = [t.replace("{}", "{c}") for t in templates]
    (out / "digits" / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    captions = [(f"{i:04d}", {"png": _png(images[i]), "txt": caption_for(i, int(labels[i])).encode()}) for i in heldout]
    _write_shard(out / "digits_captions" / "test" / "0.tar", captions)
    (out / "digits_captions" / "dataset_type.txt").write_text("retrieval\n")
    return out


def write_digits_parquet(root: str | Path, out: str | Path, row_group_size: int = 100) -> Path:
    """out/{train,heldout}.parquet from the digits under `root` (written first if needed). Returns `out`."""
    from siglip.data.parquet import pyarrow

    pa = pyarrow()
    root, out = ensure_digits(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    features = {"image": {"_type": "Image"}, "caption": {"dtype": "string", "_type": "Value"},
                "label": {"names": DIGITS_CLASSNAMES, "_type": "ClassLabel"}}  # fmt: skip
    _, labels = load_digits_array()
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the datasets Image feature
    for split in ("train", "heldout"):
        with open(root / f"{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        index = [int(Path(r["image"]).stem) for r in rows]  # NNNN.png: the scan's number
        table = pa.table(
            {
                "image": pa.array(
                    [{"bytes": (root / r["image"]).read_bytes(), "path": None} for r in rows], image_type
                ),
                "caption": [r["caption"] for r in rows],
                "label": pa.array([int(labels[i]) for i in index], pa.int64()),
            }
        ).replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
        pa.parquet.write_table(table, out / f"{split}.parquet", row_group_size=row_group_size)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write the demo digits (and, with --parquet, a parquet copy).")
    parser.add_argument("--root", default="data/digits", help="where the PNGs and CSVs go")
    parser.add_argument("--parquet", default="", help="also write train.parquet and heldout.parquet here")
    args = parser.parse_args()
    ensure_digits(args.root)
    if args.parquet:
        print(write_digits_parquet(args.root, args.parquet))
