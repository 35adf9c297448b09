"""Training batches streamed from parquet / Arrow units (row groups or record batches), with the
epochs of the manifest path: every epoch has `steps_per_epoch(n, batch)` global batches, every row is
read at most once per epoch (the remainder that fills no batch is left out), and a resume at step s
of an epoch yields exactly the batches an uninterrupted run would have yielded from s on.

One epoch, for one rank:
1. the units are shuffled (seeded by seed and epoch, the same on every rank) and laid end to end;
   `steps * min(batch, n)` rows from a seeded start (the remainder is left out at the head and the
   tail, in a split that changes each epoch) are dealt to ranks as contiguous ranges, so rank r reads
   only its range (a unit cut by a range edge is read by both neighbours, each its part);
2. the rank's range is cut into chunks at unit ends, rounded up to a batch edge, at least
   `chunk_rows` rows each; chunk j goes to DataLoader worker j % workers (so each unit is read
   by one worker, streamed);
3. a chunk's rows pass through a seeded shuffle buffer and are cut into batches of batch/world
   rows; a row's augmentation and its caption draw (list columns) are seeded by (seed, epoch, row).
A batch's contents therefore do not depend on the number of workers; the order in which the
DataLoader interleaves the workers' batches does (round robin), as for tar shards.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from siglip.data.loader import sample_seed, seeded_transform, steps_per_epoch
from siglip.data.manifests import load_image
from siglip.data.tables import BadRow, Tables, image_input, pick_caption, read_rows
from siglip.data.webdataset import shuffled
from siglip.naflex import stack_images

log = logging.getLogger(__name__)

Segment = tuple[int, int, int]  # (unit, first row, end row) within the unit


@dataclass
class Chunk:
    segments: list[Segment]
    batches: int


def _rank_segments(rows: list[int], order: list[int], start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(unit, lo, hi, position in the range) of the units laid out in `order`, clipped to [start, end)."""
    out, pos = [], 0
    for u in order:
        a, b = pos, pos + rows[u]
        lo, hi = max(a, start), min(b, end)
        if lo < hi:
            out.append((u, lo - a, hi - a, lo - start))
        pos = b
        if pos >= end:
            break
    return out


def epoch_chunks(
    rows: list[int], seed: int, epoch: int, batch_size: int, rank: int, world_size: int, chunk_rows: int
) -> list[Chunk]:
    """This rank's chunks of one epoch (see the module docstring); batch_size is the global batch."""
    n = sum(rows)
    steps = steps_per_epoch(n, batch_size)
    local = min(batch_size, n) // world_size
    if not local:
        return []
    order = list(range(len(rows)))
    rng = random.Random(f"{seed}-{epoch}-units")
    rng.shuffle(order)  # the same order on every rank
    length = steps * local
    # the remainder left out is a seeded split of the layout's head and tail, so that no row (the end
    # of a file written as one row group, say) is left out of every epoch
    base = rng.randrange(n - length * world_size + 1)
    segs = _rank_segments(rows, order, base + rank * length, base + (rank + 1) * length)
    cuts, begin = [], 0
    for _u, lo, hi, at in segs:
        end = at + hi - lo
        if end - begin >= max(chunk_rows, local) or end == length:
            cut = min(-(-end // local) * local, length)  # rounded up to a batch edge
            cuts.append((begin, cut))
            begin = cut
    if begin < length:
        cuts.append((begin, length))
    chunks = []
    for c0, c1 in cuts:
        if c0 >= c1:
            continue
        mine = [(u, lo + max(c0 - at, 0), lo + min(c1 - at, hi - lo)) for u, lo, hi, at in segs]
        chunks.append(Chunk([s for s in mine if s[1] < s[2]], (c1 - c0) // local))
    return chunks


def consumed(counts: list[int], start: int) -> tuple[list[int], int]:
    """Batches each worker made among the DataLoader's first `start`, and the worker whose batch
    comes next: the DataLoader takes batches from its workers round robin, passing over a worker
    that has no more."""
    done, w, left = [0] * len(counts), 0, start
    while left > 0 and any(d < c for d, c in zip(done, counts)):
        if done[w] < counts[w]:
            done[w] += 1
            left -= 1
        w = (w + 1) % len(counts)
    return done, w


class TableStream(IterableDataset):
    """This rank's batches {"pixels": (n, 3, S, S), "ids": (n, L), "captions", "skipped": int} of one epoch
    (`set_epoch(e, start)` first; use the DataLoader with batch_size=None)."""

    def __init__(
        self,
        tables: Tables,
        transform: Callable[[Image.Image], Tensor],
        tokenizer: Callable[[list[str]], Tensor] | None,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        draft: int = 0,
    ):
        n = tables.n_rows
        if n and min(batch_size, n) % world_size:
            raise ValueError(f"batch of {min(batch_size, n)} pairs does not split over {world_size} processes")
        self.tables, self.transform, self.tokenizer, self.batch_size = tables, transform, tokenizer, batch_size
        self.rank, self.world_size, self.seed, self.draft = rank, world_size, seed, draft
        self.shuffle_buffer = shuffle_buffer
        self.local = min(batch_size, n) // world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def chunks(self) -> list[Chunk]:
        rows = [u.rows for u in self.tables.units]
        chunk_rows = max(self.shuffle_buffer, 1)
        return epoch_chunks(rows, self.seed, self.epoch, self.batch_size, self.rank, self.world_size, chunk_rows)

    def _rows(self, seg: Segment) -> Iterator[tuple]:
        """(global row id, unit, row in unit, image cell, caption cell) of a segment; a unit that breaks
        off mid-way gives its remaining rows as (id, unit, row, None, error) so batches keep their size."""
        t, (u, lo, hi) = self.tables, seg
        r = lo
        try:
            for batch in read_rows(t, u, lo, hi, [t.image_column, t.caption_column]):
                for img, cap in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                    yield t.offsets[u] + r, u, r, img, cap
                    r += 1
        except Exception as e:  # noqa: BLE001 - a corrupt unit: its rows are skipped, counted
            log.warning("%s on: unreadable (%s); the %d rows to the unit's end are skipped", t.where(u, r), e, hi - r)
            err = BadRow(f"unreadable ({type(e).__name__})")
            yield from ((t.offsets[u] + i, u, i, None, err) for i in range(r, hi))

    def _pair(self, row: tuple) -> tuple[Tensor, str] | None:
        gid, u, r, img, cap = row
        unit = self.tables.units[u]
        try:
            if isinstance(cap, BadRow):
                raise cap
            caption = pick_caption(cap, random.Random(f"{self.seed}-{self.epoch}-{gid}"))
            image = load_image(image_input(img, self.tables.image_kind, Path(unit.file).parent), self.draft)
        except Exception as e:  # noqa: BLE001 - any decode failure means "skip this row"
            log.warning("skipping %s: %s", self.tables.where(u, r), e)
            return None
        return seeded_transform(self.transform, image, sample_seed(self.seed, self.epoch, gid)), caption

    def _batch(self, items: list) -> dict:
        good = [x for x in items if x is not None]
        if not good:
            return {"pixels": None, "ids": None, "captions": [], "skipped": len(items)}
        captions = [c for _, c in good]
        return {
            "pixels": stack_images([p for p, _ in good]),
            "ids": self.tokenizer(captions) if self.tokenizer is not None else None,
            "captions": captions,
            "skipped": len(items) - len(good),
        }

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        chunks = self.chunks()
        counts = [sum(c.batches for c in chunks[w::workers]) for w in range(workers)]
        done, first = consumed(counts, self.start)
        # a resumed loader starts its round robin at its worker 0: worker k plays the part of the worker
        # whose batch came next, so batch s onward come in the uninterrupted run's order
        me = (worker + first) % workers
        skip = done[me]  # this part's batches made before the resume
        for j in range(me, len(chunks), workers):
            chunk = chunks[j]
            if skip >= chunk.batches:  # done before the resume: not even read
                skip -= chunk.batches
                continue
            rows = (row for seg in chunk.segments for row in self._rows(seg))
            rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{j}-buffer")
            rows = itertools.islice(shuffled(rows, rng, self.shuffle_buffer), skip * self.local, None)
            skip = 0
            while batch := list(itertools.islice(rows, self.local)):
                yield self._batch([self._pair(r) for r in batch])


def table_loader(stream: TableStream, epoch: int, start: int, num_workers: int) -> Iterator[dict]:
    """Batches `start` to the end of an epoch of this rank's share."""
    stream.set_epoch(epoch, start)
    return iter(
        DataLoader(
            stream,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if num_workers else None,
        )
    )
