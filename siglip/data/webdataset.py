"""Webdataset tar shards, streamed: `--data-path '/data/laion/{00000..09999}.tar'`.

A shard is a plain tar whose members are grouped by key, as img2dataset writes them:
`00001234.jpg` + `00001234.txt` (or `00001234.json` with the caption in a field) + anything else.
The key is the member path up to the first dot of its file name; a sample's members are consecutive.

The stream, for one rank and one DataLoader worker:
- shards: shuffled per epoch (the same order on every rank), then dealt to ranks and, within a rank,
  to workers, so in a non-resampled epoch every sample is read exactly once over all of them; or,
  `resampled`, drawn with replacement forever (an epoch is then a sample count the config gives);
- samples go through a shuffle buffer, then are decoded (jpg/jpeg/png/webp; caption from .txt or
  a .json field); a corrupt or incomplete sample (or the rest of a corrupt shard) is skipped and
  counted in the next batch's "skipped";
- batches of `batch_size` good samples, tokenised in the worker.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import random
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from siglip.data.manifests import CAPTION_COLUMNS, load_image
from siglip.naflex import stack_images
from siglip.transforms import to_rgb

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
Sample = tuple[str, dict[str, bytes]]  # (key, {extension: bytes})


def expand_braces(pattern: str) -> list[str]:
    """`a/{00..02}.tar` -> a/00.tar, a/01.tar, a/02.tar (zero padding kept); `{x,y}` lists; several
    groups multiply."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.groups()
        if int(hi) < int(lo):
            raise ValueError(f"shard pattern {pattern!r}: empty range {{{body}}}")
        items = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    return [p for item in items for p in expand_braces(pattern[: m.start()] + item + pattern[m.end() :])]


def is_shard_pattern(data_path: str) -> bool:
    """Does `--data-path` name tar shards (a brace pattern or a single .tar)?"""
    return data_path.endswith(".tar") or ("{" in data_path and ".tar" in data_path)


def shard_list(pattern: str) -> list[str]:
    """The shard files of a pattern; every one must exist."""
    shards = expand_braces(pattern)
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--data-path {pattern}: {len(missing)} of {len(shards)} shards missing, e.g. {missing[0]}"
        )
    return shards


def tar_samples(path: str, errors: list[int]) -> Iterator[Sample]:
    """Samples of one shard in file order. A tar that breaks off mid-way ends the shard; the
    breakage is logged and counted in `errors[0]`."""
    key, parts = None, {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, name = os.path.split(member.name)
                if name.startswith("."):
                    continue
                stem, _, ext = name.partition(".")
                k = os.path.join(folder, stem)
                if k != key:
                    if parts:
                        yield key, parts
                    key, parts = k, {}
                parts[ext.lower()] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        log.warning("%s: unreadable after key %s (%s); skipping the rest of the shard", path, key, e)
        errors[0] += 1
        return  # the half-read sample is dropped with the rest
    if parts:
        yield key, parts


def decode(sample: Sample, caption_key: str = "", draft: int = 0) -> tuple[Image.Image, str]:
    """(RGB image, caption) of a sample; raises ValueError naming the key if it has no usable pair.
    `draft`: as `load_image`'s (JPEGs decoded at reduced scale down to this side; 0 = in full)."""
    key, parts = sample
    ext = next((e for e in IMAGE_EXTS if e in parts), None)
    if ext is None:
        raise ValueError(f"{key}: no image among {sorted(parts)}")
    image = to_rgb(load_image(io.BytesIO(parts[ext]), draft))
    if "txt" in parts and not caption_key:
        caption = parts["txt"].decode("utf-8-sig").strip()
    elif "json" in parts:
        meta = json.loads(parts["json"])
        if not isinstance(meta, dict):
            raise ValueError(f"{key}.json: not a JSON object")
        field = caption_key or next((c for c in CAPTION_COLUMNS if c in meta), None)
        if field is None or not isinstance(meta.get(field), str):
            raise ValueError(f"{key}.json: no caption field {caption_key or list(CAPTION_COLUMNS)}")
        caption = meta[field].strip()
    else:
        raise ValueError(f"{key}: no .txt or .json caption")
    if not caption:
        raise ValueError(f"{key}: empty caption")
    return image, caption


def shuffled(samples: Iterator[Sample], rng: random.Random, size: int) -> Iterator[Sample]:
    """Shuffle through a buffer of `size` samples (0 or 1: unchanged order)."""
    if size <= 1:
        yield from samples
        return
    buf: list[Sample] = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        i = rng.randrange(size)
        buf[i], s = s, buf[i]
        yield s
    rng.shuffle(buf)
    yield from buf


class TarStream(IterableDataset):
    """Batches {"pixels": (n, 3, S, S), "ids": (n, L), "keys": [str], "skipped": int} from shards.

    rank/world_size: this process's share; DataLoader workers split it further (use the DataLoader
    with batch_size=None). `repeat`: after the last shard start another shuffled pass instead of
    stopping (training: every rank then makes as many batches as asked). `set_epoch(e, start)`:
    the shard order and shuffles of epoch e, skipping the first `start` batches (resume)."""

    def __init__(
        self,
        shards: list[str],
        transform: Callable[[Image.Image], Tensor],
        tokenizer: Callable[[list[str]], Tensor] | None,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        repeat: bool = False,
        caption_key: str = "",
        draft: int = 0,
    ):
        if not resampled and len(shards) < world_size:
            raise ValueError(f"{len(shards)} shards for {world_size} processes: each needs at least one")
        self.shards, self.transform, self.tokenizer, self.batch_size = shards, transform, tokenizer, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle_buffer, self.resampled, self.repeat, self.caption_key = (
            shuffle_buffer,
            resampled,
            repeat,
            caption_key,
        )
        self.draft = draft  # JPEGs decoded at reduced scale down to this side (load_image); 0 = in full
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _shards(self, worker: int, workers: int) -> Iterator[str]:
        if self.resampled:
            rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{worker}")
            while True:
                yield rng.choice(self.shards)
        for p in itertools.count() if self.repeat else [0]:
            order = list(self.shards)
            random.Random(f"{self.seed}-{self.epoch}-{p}").shuffle(order)  # same on every rank
            mine = order[self.rank :: self.world_size][worker::workers]
            if not mine:
                log.warning("rank %d worker %d has no shard: use fewer workers or more shards", self.rank, worker)
                return
            yield from mine

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        errors = [0]
        samples = (s for shard in self._shards(worker, workers) for s in tar_samples(shard, errors))
        rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{worker}-buffer")
        samples = shuffled(samples, rng, self.shuffle_buffer)
        # resume: the DataLoader takes batch i from worker i % workers, so this worker made the
        # batches worker, worker + workers, ... below `start`; skip their samples without decoding
        n_skip = len(range(worker, self.start, workers)) * self.batch_size
        samples = itertools.islice(samples, n_skip, None)
        good: list[tuple[Tensor, str, str]] = []
        for sample in samples:
            try:
                image, caption = decode(sample, self.caption_key, self.draft)
                good.append((self.transform(image), caption, sample[0]))
            except Exception as e:  # noqa: BLE001 - any decode failure means "skip this sample"
                log.warning("skipping sample %s: %s", sample[0], e)
                errors[0] += 1
            if len(good) == self.batch_size:
                yield self._batch(good, errors)
                good = []
        if good or errors[0]:
            yield self._batch(good, errors)

    def _batch(self, good: list, errors: list[int]) -> dict:
        skipped, errors[0] = errors[0], 0
        if not good:
            return {"pixels": None, "ids": None, "keys": [], "skipped": skipped}
        captions = [c for _, c, _ in good]
        return {
            "pixels": stack_images([p for p, _, _ in good]),
            "ids": self.tokenizer(captions) if self.tokenizer is not None else None,
            "captions": captions,
            "keys": [k for _, _, k in good],
            "skipped": skipped,
        }


def stream_loader(dataset: TarStream, epoch: int, start: int, steps: int, num_workers: int) -> Iterator[dict]:
    """Batches `start` to `steps` of an epoch of a repeating stream: every rank makes exactly as many
    (a rank whose shards run out starts another pass), so no rank waits at the epoch end."""
    if not dataset.repeat:
        raise ValueError("training needs a repeating stream (TarStream(..., repeat=True))")
    dataset.set_epoch(epoch, start)
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if num_workers else None,
    )
    return itertools.islice(loader, steps - start)


def count_samples(shards: list[str]) -> int:
    """Samples (keys with an image member) in the shards, reading tar headers only."""
    n = 0
    for path in shards:
        with tarfile.open(path) as tar:
            keys = set()
            for m in tar:
                folder, name = os.path.split(m.name)
                stem, _, ext = name.partition(".")
                if m.isfile() and ext.lower() in IMAGE_EXTS:
                    keys.add(os.path.join(folder, stem))
            n += len(keys)
    return n


def read_captions(shards: list[str], limit: int, caption_key: str = "") -> list[str]:
    """Up to `limit` captions from the first shards (for training a tokenizer); no image decoding."""
    captions, errors = [], [0]
    for path in shards:
        for _key, parts in tar_samples(path, errors):
            if "txt" in parts and not caption_key:
                captions.append(parts["txt"].decode("utf-8", "replace").strip())
            elif "json" in parts:
                try:
                    meta = json.loads(parts["json"])
                    field = caption_key or next((c for c in CAPTION_COLUMNS if c in meta), None)
                    if field is not None and isinstance(meta.get(field), str):
                        captions.append(meta[field].strip())
                except json.JSONDecodeError:
                    continue
            if len(captions) >= limit:
                return captions
    return captions
