"""Training pairs from disk: manifests (CSV/TSV/JSONL), caption folders, and the batches built from them.

`--data-path` decides by what is on disk:
- a file ending .csv / .tsv / .jsonl: a manifest, one image path and one caption per row (columns
  found among common names or named in the config); relative paths resolve against its folder;
- a folder: every image in it (recursively) with a same-named `.txt` caption beside it;
- `digits`: the bundled demo data (see `siglip.digits`);
- tar shards (`'/data/{00000..00099}.tar'`): streamed by `siglip.webdataset`, not listed here.

A corrupt or missing image is skipped and counted (batches carry the count); a malformed manifest
row is an error naming the file and line.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .tokenizer import Tokenizer
from .transforms import to_rgb

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "image_path", "filepath", "file_path", "file_name", "filename", "img", "path")
CAPTION_COLUMNS = ("caption", "text", "title", "sentence", "raw", "txt", "label")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MANIFEST_EXTENSIONS = (".csv", ".tsv", ".jsonl")

Pair = tuple[str, str]  # (image path, caption)


class ManifestError(ValueError):
    """A manifest that cannot be read: the message names the file and line."""


def _pick_column(names: list[str], wanted: str, candidates: tuple[str, ...], what: str, path: Path) -> str:
    if wanted:
        if wanted not in names:
            raise ManifestError(f"{path}: no {what} column {wanted!r}; columns are {names}")
        return wanted
    lower = {n.lower(): n for n in names}
    for c in candidates:
        if c in lower:
            return lower[c]
    raise ManifestError(
        f"{path}: cannot find the {what} column among {names}; name it with "
        f"--config.data.{'image' if what == 'image' else 'caption'}_column=NAME (looked for {list(candidates)})"
    )


def _jsonl_rows(f, path: Path, image_column: str, caption_column: str) -> Iterator[tuple[int, object, object]]:
    """(line, image, caption) of a JSONL manifest."""
    img_col = cap_col = None
    for line_no, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ManifestError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        if img_col is None:
            img_col = _pick_column(list(row), image_column, IMAGE_COLUMNS, "image", path)
            cap_col = _pick_column(list(row), caption_column, CAPTION_COLUMNS, "caption", path)
        if img_col not in row or cap_col not in row:
            raise ManifestError(f"{path}:{line_no}: missing key {img_col!r} or {cap_col!r}")
        yield line_no, row[img_col], row[cap_col]


def _csv_rows(f, path: Path, delimiter: str, image_column: str, caption_column: str) -> Iterator[tuple[int, str, str]]:
    """(line, image, caption) of a CSV/TSV manifest with a header row."""
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 27))  # the default 128k chars fails long captions
    reader = csv.reader(f, delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(f"{path}: empty manifest (a header row is needed)") from None
    img_i = header.index(_pick_column(header, image_column, IMAGE_COLUMNS, "image", path))
    cap_i = header.index(_pick_column(header, caption_column, CAPTION_COLUMNS, "caption", path))
    try:
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise ManifestError(
                    f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)} "
                    "(a caption with the delimiter in it must be quoted)"
                )
            yield reader.line_num, row[img_i], row[cap_i]
    except csv.Error as e:
        raise ManifestError(f"{path}:{reader.line_num}: {e}") from None


def read_manifest(path: str | Path, image_column: str = "", caption_column: str = "") -> list[Pair]:
    """Rows of a CSV/TSV (with a header row) or JSONL manifest as (absolute image path, caption).
    UTF-8 with or without a byte-order mark, LF or CRLF, quoted fields may hold newlines; rows with
    an empty caption are skipped and counted in the log."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_EXTENSIONS:
        raise ManifestError(f"{path}: unknown manifest type; expected one of {MANIFEST_EXTENSIONS}")
    root = path.resolve().parent
    pairs: list[Pair] = []
    empty: list[int] = []
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is not part of the first column
        if suffix == ".jsonl":
            rows = _jsonl_rows(f, path, image_column, caption_column)
        else:
            rows = _csv_rows(f, path, "\t" if suffix == ".tsv" else ",", image_column, caption_column)
        for line_no, image, caption in rows:
            if not isinstance(image, str) or not image.strip():
                raise ManifestError(f"{path}:{line_no}: empty or missing image path")
            if not isinstance(caption, str):
                raise ManifestError(f"{path}:{line_no}: caption is not text: {caption!r}")
            if not caption.strip():
                empty.append(line_no)
                continue
            image_path = Path(image.strip())
            pairs.append((str(image_path if image_path.is_absolute() else root / image_path), caption))
    if empty:
        log.warning("%s: %d rows with an empty caption skipped (first at line %d)", path, len(empty), empty[0])
    if not pairs:
        raise ManifestError(f"{path}: no rows" + (f" with a caption ({len(empty)} empty)" if empty else ""))
    return pairs


def read_caption_folder(root: str | Path) -> list[Pair]:
    """Every image under `root` with a same-named .txt file beside it (`a/b.jpg` + `a/b.txt`).
    Images without a caption file are skipped and counted in the log."""
    root = Path(root)
    pairs: list[Pair] = []
    missing = 0
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            txt = p.with_suffix(".txt")
            caption = txt.read_text(encoding="utf-8-sig").strip() if txt.is_file() else ""
            if caption:
                pairs.append((str(p), caption))
            else:
                missing += 1
    if missing:
        log.warning("%s: %d images have no (or an empty) .txt caption beside them and are skipped", root, missing)
    if not pairs:
        raise FileNotFoundError(f"{root}: no images with same-named .txt captions found")
    return pairs


def find_pairs(data_path: str, image_column: str = "", caption_column: str = "", digits_root: str = "") -> list[Pair]:
    """Resolve `--data-path` to pairs, deciding by what is on disk."""
    if not data_path:
        raise ValueError("no training data: pass --data-path (a manifest, a caption folder, or 'digits')")
    if data_path == "digits":
        from .digits import ensure_digits

        return read_manifest(ensure_digits(digits_root or "data/digits") / "train.csv")
    p = Path(data_path)
    if p.is_dir():
        return read_caption_folder(p)
    if p.is_file():
        return read_manifest(p, image_column, caption_column)
    raise FileNotFoundError(
        f"--data-path {data_path}: no such file or folder (expected a .csv/.tsv/.jsonl manifest, "
        "a folder of images with .txt captions, webdataset shards like 'dir/{00000..00099}.tar', or 'digits')"
    )


def load_image(path: str) -> Image.Image:
    """Open and fully decode (so truncated files fail here, not later)."""
    with Image.open(path) as img:
        img.load()
        return img.copy() if img.mode in ("RGB", "L") else to_rgb(img)


class PairDataset(Dataset):
    """(pixels, caption) per pair, or None when the image cannot be read (counted by the collate).

    Augmentation randomness is seeded per (seed, epoch, index), so batches are the same whatever
    the worker count and after a resume."""

    def __init__(self, pairs: list[Pair], transform: Callable[[Image.Image], Tensor], seed: int = 0):
        self.pairs = pairs
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor, str] | None:
        path, caption = self.pairs[i]
        try:
            img = load_image(path)
        except Exception as e:  # noqa: BLE001 - any decode failure means "skip this sample"
            log.warning("skipping unreadable image %s: %s", path, e)
            return None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            pixels = self.transform(img)
        return pixels, caption


class Collate:
    """List of (pixels, caption) or None -> {"pixels": (n, 3, S, S), "ids": (n, L), "skipped": int}."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items: list) -> dict:
        good = [x for x in items if x is not None]
        if not good:
            return {"pixels": None, "ids": None, "skipped": len(items)}
        return {
            "pixels": torch.stack([x[0] for x in good]),
            "ids": self.tokenizer([x[1] for x in good]),
            "skipped": len(items) - len(good),
        }


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a seeded permutation for one epoch, starting at batch `start` (for resuming).
    The last incomplete batch is dropped, unless the dataset is smaller than one batch.
    With `world_size` > 1 each rank takes its contiguous slice of every global batch, so the ranks
    together see exactly the batches of a single-process run."""

    def __init__(
        self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0, rank: int = 0, world_size: int = 1
    ):
        self.n, self.batch_size, self.seed, self.epoch, self.start = n, batch_size, seed, epoch, start
        self.rank, self.world_size = rank, world_size
        if min(batch_size, n) % world_size:
            raise ValueError(f"batch of {min(batch_size, n)} pairs does not split over {world_size} processes")

    def __len__(self) -> int:
        return steps_per_epoch(self.n, self.batch_size) - self.start

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        bs = min(self.batch_size, self.n)
        local = bs // self.world_size
        for k in range(self.start, steps_per_epoch(self.n, self.batch_size)):
            yield order[k * bs : (k + 1) * bs][self.rank * local : (self.rank + 1) * local]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size) if n else 0


def epoch_loader(
    dataset: PairDataset,
    tokenizer: Tokenizer,
    batch_size: int,
    epoch: int,
    start: int,
    num_workers: int,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """The loader for one epoch from batch `start`; decoding and resizing run in `num_workers` processes.
    `batch_size` is the global batch; this rank gets its 1/world_size slice of each."""
    dataset.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_sampler=EpochBatchSampler(len(dataset), batch_size, dataset.seed, epoch, start, rank, world_size),
        collate_fn=Collate(tokenizer),
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if num_workers else None,
    )
