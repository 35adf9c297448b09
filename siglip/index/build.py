"""Embed a source's items into an index on disk: resumable, incremental, one process or many.

Every process lists the same items and the keys the index already has (rows, committed parts and
skipped items), so all agree on the work left; that work is cut into units of consecutive items,
process r takes units r, r + W, r + 2W, ... and writes one part per unit. Process 0 then merges the
parts (`siglip.index.store.consolidate`). Images are decoded in DataLoader workers; an unreadable
one is skipped with its reason, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from siglip.api import Model
from siglip.distributed import Runtime, barrier
from siglip.index.ann_update import follow_append
from siglip.index.sources import Item
from siglip.index.store import check_model, consolidate, done_keys, read_meta, read_parts, replacing, write_part
from siglip.interop.hub import stored_ref
from siglip.naflex import stack_images
from siglip.transforms import ready

log = logging.getLogger(__name__)


@dataclass
class EmbedOptions:
    kind: str = "image"  # or "text"
    batch_size: int = 64
    workers: int = 2
    unit_size: int = 4096  # items per part: the work an interruption can lose
    store_dtype: str = "float16"
    source: str = ""
    progress: bool = True


class _Images(Dataset):
    """(pixels or None, position, reason) per item. `preprocess`: the model's own (`Model.preprocess`,
    one image -> its input); the workers get it, not the model."""

    def __init__(self, items: list[Item], preprocess: Callable[[Image.Image], Tensor]):
        self.items, self.preprocess = items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor | None, int, str]:
        try:
            return self.preprocess(self.items[i].open()), i, ""
        except Exception as e:  # noqa: BLE001 - any decode failure: skipped with its reason
            return None, i, f"{type(e).__name__}: {e}"


def _collate(batch: list) -> tuple[Tensor | None, list[int], list[tuple[int, str]]]:
    ok = [b for b in batch if b[0] is not None]
    pixels = stack_images([b[0] for b in ok]) if ok else None  # (n, 3, S, S) or NaFlexPatches
    return pixels, [b[1] for b in ok], [(b[1], b[2]) for b in batch if b[0] is None]


def _unit_batches(units: list[list[int]], batch_size: int) -> list[list[int]]:
    """Positions in batches that never cross a unit's end, so a unit is done at a batch boundary."""
    return [u[s : s + batch_size] for u in units for s in range(0, len(u), batch_size)]


def _image_rows(model: Model, items: list[Item], units: list[list[int]], opts: EmbedOptions) -> Iterator:
    """Per batch: (positions embedded, (m, d) rows, [(position, reason)] skipped)."""
    loader = DataLoader(
        _Images(items, ready(model.preprocess) if opts.workers else model.preprocess),
        batch_sampler=_unit_batches(units, opts.batch_size),
        num_workers=opts.workers,
        collate_fn=_collate,
        pin_memory=model.device.type == "cuda",
    )
    for pixels, pos, bad in loader:
        rows = model.encode_prepared(pixels).cpu() if pixels is not None else torch.zeros(0, model.dim)
        yield pos, rows, bad


def embed_image_items(
    model: Model, items: list[Item], batch_size: int = 64, workers: int = 2, progress: bool = True
) -> tuple[Tensor, list[int], list[dict]]:
    """Embed every readable item: (m, d) float32 rows, their m positions in `items`, and the skipped
    items ({key, reason, ...record})."""
    opts = EmbedOptions(batch_size=batch_size, workers=workers)
    rows, ok, skipped = [], [], []
    bar = tqdm(total=len(items), desc="images", unit="image", disable=not progress)
    for pos, z, bad in _image_rows(model, items, [list(range(len(items)))], opts):
        rows.append(z)
        ok += pos
        skipped += [{"key": items[p].key, "reason": reason, **items[p].record} for p, reason in bad]
        bar.update(len(pos) + len(bad))
    bar.close()
    return (torch.cat(rows) if rows else torch.zeros(0, model.dim)), ok, skipped


def _text_rows(model: Model, items: list[Item], units: list[list[int]], opts: EmbedOptions) -> Iterator:
    for batch in _unit_batches(units, opts.batch_size):
        yield batch, model.embed_texts([items[i].record["text"] for i in batch]), []


def _write_units(model: Model, items: list[Item], units: list[list[int]], index: Path, opts: EmbedOptions) -> None:
    """Embed this process's units; a unit's part is written as soon as its last batch is done."""
    unit_of = {p: u for u, positions in enumerate(units) for p in positions}
    left = [len(u) for u in units]
    rows: dict[int, list] = {u: [] for u in range(len(units))}
    skipped: dict[int, list] = {u: [] for u in range(len(units))}
    produce = _image_rows if opts.kind == "image" else _text_rows
    bar = tqdm(total=sum(left), desc=f"embed {opts.kind}s", unit=opts.kind, disable=not opts.progress)
    for pos, z, bad in produce(model, items, units, opts):
        for p, r in zip(pos, z.numpy().astype(opts.store_dtype)):
            rows[unit_of[p]].append((p, r))
        for p, reason in bad:
            log.warning("skipped %s: %s", items[p].key, reason)
            skipped[unit_of[p]].append({"key": items[p].key, "reason": reason, **items[p].record})
        for p in list(pos) + [b[0] for b in bad]:
            u = unit_of[p]
            left[u] -= 1
            if left[u] == 0:
                got = sorted(rows.pop(u), key=lambda x: x[0])
                z_u = np.stack([r for _, r in got]) if got else np.zeros((0, model.dim), opts.store_dtype)
                keys = [items[p].key for p, _ in got]
                write_part(index, keys, [items[p].record for p, _ in got], z_u, skipped.pop(u), model.fingerprint)
        bar.update(len(pos) + len(bad))
    bar.close()


def embed_items(model: Model, items: list[Item], index: str | Path, opts: EmbedOptions, rt: Runtime) -> dict:
    """Embed the `items` the index at `index` lacks and merge them in; returns the index's meta.
    Every process of `rt` calls this with the same items; process 0 writes meta.json."""
    index = Path(index)
    index.mkdir(parents=True, exist_ok=True)
    meta = None if replacing(index) else read_meta(index)  # --overwrite: the items so far do not count
    if meta is not None:
        check_model(meta, model.fingerprint, index)
        if meta.get("kind") != opts.kind:
            raise ValueError(
                f"{index}: an index of {meta.get('kind')}s; this run embeds {opts.kind}s (use another --out)"
            )
    for _, body in read_parts(index):
        check_model({"fingerprint": body["fingerprint"], "model": "an interrupted run"}, model.fingerprint, index)
    done = done_keys(index, meta)
    barrier(rt)  # every process has read the same state before any writes a part
    todo = [i for i, it in enumerate(items) if it.key not in done]
    size = max(1, min(opts.unit_size, -(-len(todo) // rt.world_size)))  # every process gets work
    units = [todo[s : s + size] for s in range(0, len(todo), size)]
    if rt.is_main:
        log.info("%d items, %d already indexed or skipped, %d to embed", len(items), len(items) - len(todo), len(todo))
    _write_units(
        model,
        items,
        units[rt.rank :: rt.world_size],
        index,
        EmbedOptions(**{**opts.__dict__, "progress": opts.progress and rt.is_main}),
    )
    barrier(rt)
    if rt.is_main:
        run = {
            "kind": opts.kind, "model": stored_ref(model.path), "fingerprint": model.fingerprint, "dim": model.dim,
            "dtype": opts.store_dtype, "source": opts.source,
        }  # fmt: skip
        old = meta  # None when replacing: the approximate index then stays with the replaced generation (stale)
        meta = consolidate(index, run, {it.key: i for i, it in enumerate(items)})
        follow_append(index, old, meta)  # the approximate index, if any, takes the new rows (or is stale)
    barrier(rt)
    return read_meta(index)
