"""What one server process holds once: the model, its indexes, the batching queue, the limits, the
metrics; and the steps every route shares (embed texts or uploaded images, pick an index, build a
thumbnail URL).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import quote

from fastapi import Request
from torch import Tensor

from siglip.api import Model, TokenizerMissing
from siglip.serve import fields
from siglip.serve.batching import Batcher, InputFailed, Overloaded
from siglip.serve.images import URL_TTL_S, decode_image, thumbnail_query
from siglip.serve.indexes import ServedIndex
from siglip.serve.limits import ApiError
from siglip.serve.metrics import Metrics


@dataclass
class Settings:
    """The command's limits and switches (see `siglip serve --help`)."""

    api_key: str = ""
    host: str = "127.0.0.1"  # the bound address and port: with the loopback names, the Host headers answered
    port: int = 0  # 0: any port (an app run in-process)
    allowed_hosts: list[str] = field(default_factory=list)  # more Host names (--allowed-hosts); "*": any
    body_timeout_s: float = 60.0  # the whole body within this after the headers, else 408 (0: none)
    request_timeout_s: float = 120.0  # the whole request within this, else 503 (0: none)
    max_body: int = 20 * 1024 * 1024  # bytes
    max_pixels: int = 40_000_000  # per uploaded image, width x height
    max_inputs: int = 2048  # texts per request (OpenAI's limit)
    max_images: int = 256  # images per request
    max_images_held: int = 1024  # decoded images held at once, all requests together (~0.6 GB at 224 px)
    max_concurrent: int = 256  # requests in flight (bodies held) before 503
    max_k: int = 1000  # results per search (and ids per /metadata)
    max_candidates: int = 10_000  # rows an approximate search re-reads per query (rerank x k, capped)
    max_exact_rows: int = 1_000_000  # "exact": true on an index with an approximate one, up to this many rows
    max_scans: int = 2  # exact scans at once, all requests together (the others wait their turn)
    public_url: str = ""  # the base of absolute URLs (thumbnails); default: the request's own
    url_ttl_s: int = URL_TTL_S  # how long a thumbnail URL works (then 410)
    cors: list[str] = field(default_factory=list)
    retry_after_s: int = 1


@dataclass
class ServerState:
    """Built once by `siglip serve` (or a test) and shared by every request: `request.app.state.siglip`."""

    model: Model
    indexes: dict[str, ServedIndex]
    settings: Settings
    batcher: Batcher
    metrics: Metrics
    images_held: int = 0  # images of the requests in flight, until their decoding has stopped (event loop only)
    scans: asyncio.Semaphore | None = None  # exact scans at once: settings.max_scans

    def __post_init__(self):
        self.scans = asyncio.Semaphore(max(1, self.settings.max_scans))

    @classmethod
    def build(cls, model: Model, indexes: dict[str, ServedIndex], settings: Settings, **batching) -> ServerState:
        """`batching`: Batcher's max_batch, max_wait_ms, max_queue, decode_threads."""
        metrics = Metrics(index_rows={name: ix.count for name, ix in indexes.items()})
        batcher = Batcher(model, on_batch=metrics.batch, **batching)
        metrics.queue_depth = lambda: batcher.depth
        return cls(model, indexes, settings, batcher, metrics)

    @property
    def model_name(self) -> str:
        return self.model.path.rstrip("/").rsplit("/", 1)[-1] or "siglip"

    # ---------------------------------------------------------------------------------------------

    def index(self, name: str | None, field: str = "index") -> ServedIndex:
        """The index called `name`; with one index served, `name` may be omitted."""
        if not self.indexes:
            raise ApiError(400, "this server holds no index (start it with --index NAME=PATH)")
        if name is None or name == "":
            if len(self.indexes) == 1:
                return next(iter(self.indexes.values()))
            raise ApiError(400, f"{field}: required with several indexes; choose one of {sorted(self.indexes)}")
        if not isinstance(name, str):
            raise ApiError(400, f"{field}: expected a string (an index name)")
        if name not in self.indexes:
            raise ApiError(404, f"{field}: no index {name!r}; this server has {sorted(self.indexes)}")
        return self.indexes[name]

    async def embed_texts(self, texts: list[str], field: str = "input") -> Tensor:
        """(n, d) unit rows, through the batching queue. Each text is checked first (it must encode
        as UTF-8: a lone surrogate would fail inside the tokenizer)."""
        if not self.model.has_tokenizer:
            raise ApiError(400, "this model was loaded without a tokenizer, so it cannot embed texts")
        for i, t in enumerate(texts):
            fields.check_unicode(t, f"{field}[{i}]" if len(texts) > 1 else field)
        return await self._embed("text", texts)

    async def embed_images(self, values: list[str], field: str, positions: list[int] | None = None) -> Tensor:
        """Base64 / data: URL images -> (n, d) unit rows: decoded and preprocessed in decode threads
        (header checked against --max-pixels first), then embedded through the batching queue.
        Errors name `field` (a single image) or `field[i]` (`positions`: each value's i in the request)."""
        if positions is None and field.endswith("s"):
            positions = list(range(len(values)))
        names = [f"{field}[{i}]" for i in positions] if positions is not None else [field] * len(values)
        if len(values) > self.settings.max_images:
            raise ApiError(
                400, f"{field}: {len(values)} images, over the limit of {self.settings.max_images} per request"
            )
        if self.images_held + len(values) > self.settings.max_images_held:
            retry = {"Retry-After": str(self.settings.retry_after_s)}
            raise ApiError(503, f"the server holds {self.images_held} images in flight already; retry", retry)
        self.images_held += len(values)
        try:  # decode_all returns (or raises) only once none of its jobs runs any more: the budget holds
            prepared = await self.batcher.decode_all(self._prepare, list(zip(values, names)))
            return await self._embed("image", prepared)
        finally:
            self.images_held -= len(values)

    def _prepare(self, value: str, field: str) -> Tensor:
        """One image, in a decode thread: base64 -> PIL (size checked first) -> the model's input."""
        return self.model.preprocess(decode_image(value, field, self.settings.max_pixels))

    async def _embed(self, kind: str, inputs: list) -> Tensor:
        try:
            return await self.batcher.embed(kind, inputs)
        except Overloaded as e:
            retry = {"Retry-After": str(self.settings.retry_after_s)}
            raise ApiError(503, "the server is at capacity (--max-queue requests waiting); retry", retry) from e
        except TokenizerMissing as e:
            raise ApiError(400, str(e)) from e
        except InputFailed as e:  # the model failed on these inputs alone, not on their neighbours'
            raise ApiError(400, f"the model could not embed this request's {kind}s ({e})"[:500]) from e

    # ---------------------------------------------------------------------------------------------

    def base_url(self, request: Request) -> str:
        return (self.settings.public_url or str(request.base_url)).rstrip("/")

    def thumbnail_url(self, request: Request, index: str, row: int, generation: str) -> str:
        """Absolute URL of item `row`'s thumbnail in that generation of the index, expiring after
        --url-ttl; signed (`sig=`) when the server has an API key (siglip.serve.images)."""
        url = f"{self.base_url(request)}/items/{quote(index, safe='')}/{row}/thumbnail"
        query = thumbnail_query(self.settings.api_key, index, row, quote(generation, safe=""), self.settings.url_ttl_s)
        return f"{url}?{query}"
