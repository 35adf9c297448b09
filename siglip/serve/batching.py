"""Dynamic batching: concurrent requests' texts (or images) go through the model together.

A request's inputs enter a bounded queue as one entry with a future. One worker task takes the
oldest entry, waits up to `max_wait_ms` for more entries of the same kind (or until `max_batch`
inputs are there), and runs them as one batch in the model thread; each request gets its own rows
back. While the model runs, new requests queue up, so under load batches fill without any wait. The
wait ends early once as many requests are queued as were seen at the last batch's end (its own and
those that queued while it ran): a lone client is never kept waiting for a batch to fill.
`max_batch=1` serves one request at a time (what batching is measured against). A request larger
than a batch runs in model calls of at most `max(max_batch, CHUNK)` inputs (bounded activations).

A batch that fails is retried request by request, so one bad input fails its own request only
(`InputFailed` when its neighbours went through, or when the error is a ValueError / TypeError: the
routes answer 400), never the others of its batch.

The event loop never runs the model: `Model.embed_texts` / `embed_images` run in one dedicated
thread (so calls never overlap on the weights), and image decoding runs in a small pool of decode
threads (`decode`, `decode_all`). A request's decode jobs that have not started when one of them
fails (or the request goes away) are cancelled, and `decode_all` returns only once the ones running
have stopped: no work outlives its request, so the callers' budgets hold. A full queue raises
`Overloaded` (the routes answer 503 with Retry-After). `stop` cancels whatever has not started.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from siglip.api import Model
from siglip.naflex import stack_images

CHUNK = 64  # a request larger than max(max_batch, CHUNK) inputs runs in model calls of that many


class Overloaded(Exception):
    """The queue holds `max_queue` requests already."""


class InputFailed(Exception):
    """The model failed on this request's inputs alone (its neighbours in the batch went through)."""


@dataclass
class Entry:
    kind: str  # "text" or "image"
    inputs: list  # texts, or preprocessed images ((3, S, S) tensors / NaFlex patches)
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """Queue + worker. `on_batch(kind, n_inputs, n_requests)` is called after every model call (metrics)."""

    def __init__(
        self,
        model: Model,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        max_queue: int = 256,
        decode_threads: int = 2,
        on_batch: Callable[[str, int, int], None] | None = None,
    ):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"--max-batch {max_batch} and --max-queue {max_queue} must be >= 1, --max-wait-ms >= 0")
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait_ms / 1000
        self.max_queue, self.on_batch = max_queue, on_batch
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="siglip-model")
        self.decode_pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="siglip-decode")
        self.queue: deque[Entry] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._expect = 0  # requests seen at the last batch's end (its own + queued since): whom a batch waits for

    @property
    def depth(self) -> int:
        """Requests waiting (not counting the batch in the model)."""
        return len(self.queue)

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._worker = asyncio.create_task(self._run(), name="siglip-batcher")

    async def stop(self) -> None:
        """After the server has drained its requests: end the worker, release the threads."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for entry in self.queue:
            if not entry.future.done():
                entry.future.set_exception(Overloaded())
        self.model_thread.shutdown(wait=True, cancel_futures=True)  # only what is running now
        self.decode_pool.shutdown(wait=True, cancel_futures=True)

    # ---------------------------------------------------------------------------------------------

    async def embed(self, kind: str, inputs: list) -> Tensor:
        """(len(inputs), d) float32 unit rows for texts (kind "text") or preprocessed images ("image")."""
        if not inputs:
            return torch.zeros(0, self.model.dim)
        if len(self.queue) >= self.max_queue:
            raise Overloaded()
        entry = Entry(kind, list(inputs), asyncio.get_running_loop().create_future())
        self.queue.append(entry)
        self._arrived.set()
        return await entry.future

    async def decode(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` in a decode thread (image decoding and preprocessing)."""
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, fn, *args)

    async def decode_all(self, fn: Callable[..., Any], jobs: list[tuple]) -> list:
        """`[fn(*args) for args in jobs]`, in the decode threads. When one raises (or the caller is
        cancelled), the jobs not started yet are cancelled, and this raises only once the jobs already
        running have stopped: a failed request leaves no work behind in the pool."""
        loop = asyncio.get_running_loop()
        futures = [self.decode_pool.submit(fn, *args) for args in jobs]
        try:
            return await asyncio.gather(*(asyncio.wrap_future(f, loop=loop) for f in futures))
        finally:
            running = [f for f in futures if not f.cancel() and not f.done()]  # cancel() is False once started
            if running:
                await asyncio.wait([asyncio.wrap_future(f, loop=loop) for f in running])

    async def in_model_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` in the model thread, between batches (e.g. label embeddings)."""
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    # ---------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            while not self.queue:
                self._arrived.clear()
                await self._arrived.wait()
            batch = await self._gather()
            kind = batch[0].kind
            try:
                rows = await self.in_model_thread(self._forward, kind, [x for e in batch for x in e.inputs])
            except Exception as e:  # noqa: BLE001 - the requests get the error, the worker lives on
                await self._one_by_one(batch, e)
                continue
            at = 0
            for entry in batch:
                if not entry.future.done():  # a client that went away cancelled its future
                    entry.future.set_result(rows[at : at + len(entry.inputs)])
                at += len(entry.inputs)
            self._expect = len(batch) + len(self.queue)
            if self.on_batch is not None:
                self.on_batch(kind, at, len(batch))

    async def _one_by_one(self, batch: list[Entry], error: Exception) -> None:
        """A failed batch, again request by request: the requests that go through get their rows; one
        that fails while another went through (or with a ValueError / TypeError) gets InputFailed."""
        live = [e for e in batch if not e.future.done()]  # not the requests that went away
        failures = [(live[0], error)] if len(live) == 1 else []
        for entry in live if len(live) > 1 else []:
            try:
                rows = await self.in_model_thread(self._forward, entry.kind, entry.inputs)
                if not entry.future.done():
                    entry.future.set_result(rows)
            except Exception as e:  # noqa: BLE001
                failures.append((entry, e))
        blame_input = len(failures) < len(live)
        for entry, e in failures:
            if not entry.future.done():
                bad = blame_input or isinstance(e, (ValueError, TypeError))
                entry.future.set_exception(InputFailed(f"{type(e).__name__}: {e}") if bad else e)

    async def _gather(self) -> list[Entry]:
        """The oldest entry plus the queued entries of its kind that fit in `max_batch`, after waiting
        up to `max_wait` from its arrival for more to come (until `_expect` requests are queued)."""
        kind = self.queue[0].kind
        deadline = self.queue[0].queued_at + self.max_wait
        while self._short(kind) and (left := deadline - time.perf_counter()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        batch, size, keep = [], 0, deque()
        while self.queue:
            entry = self.queue.popleft()
            fits = entry.kind == kind and (not batch or size + len(entry.inputs) <= self.max_batch)
            if fits and not entry.future.done():
                batch.append(entry)
                size += len(entry.inputs)
            elif not entry.future.done():
                keep.append(entry)
        self.queue.extendleft(reversed(keep))
        return batch or await self._gather_next()

    async def _gather_next(self) -> list[Entry]:
        while not self.queue:  # every queued entry was cancelled: wait for a new one
            self._arrived.clear()
            await self._arrived.wait()
        return await self._gather()

    def _short(self, kind: str) -> bool:
        """Fewer than `max_batch` inputs and fewer than `_expect` requests of `kind` queued."""
        mine = [len(e.inputs) for e in self.queue if e.kind == kind]
        return sum(mine) < self.max_batch and len(mine) < self._expect

    def _forward(self, kind: str, inputs: list) -> Tensor:
        size = max(self.max_batch, CHUNK)
        if kind == "text":
            return self.model.embed_texts(inputs, batch_size=size)
        return self.model.embed_images(stack_images(inputs), batch_size=size)
