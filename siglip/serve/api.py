"""Our own routes: search an index, classify and score images, item thumbnails, health and metrics.

    POST /v1/search    {"index"?, "text" | "image" | "vector", "k"?: 10, "exact"?: false}
                       -> {"index", "k", "hits": [{"row", "path"?, "caption"?, "text"?, "score", "logit",
                           "cosine", "thumbnail"?}]}        score = sigmoid(logit), logit = t * cosine + b
    POST /v1/classify  {"images": [...], "labels": [...], "templates"?: ["a photo of a {}."]}
                       -> {"labels", "results": [{"probabilities": [per label], "top"}]}
    POST /v1/score     {"images": [...], "texts": [...], "pairs"?: false}
                       -> {"probabilities": (n_img, n_txt) or (n,), "logits": the same shape}
    GET  /items/{index}/{row}/thumbnail   a JPEG, longer side <= 256 px, of an item in that index
    GET  /health       {"status": "ok", ...}        GET /metrics   Prometheus text

Images are base64 strings or `data:image/...;base64,` URLs.
"""

from __future__ import annotations

import torch
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from siglip.api import DEFAULT_TEMPLATES
from siglip.model import l2_normalize
from siglip.serve import fields
from siglip.serve.images import ThumbnailCache, check_generation, check_thumbnail_url, thumbnail_jpeg
from siglip.serve.indexes import IndexView
from siglip.serve.limits import ApiError, check_bearer
from siglip.serve.state import ServerState

MAX_TEMPLATES = 128
MAX_LABEL_PROMPTS = 16_384  # labels x templates per classify request


def state_of(request: Request) -> ServerState:
    return request.app.state.siglip


def require_key(request: Request) -> None:
    """Dependency of every API route: the Bearer key when the server has one."""
    check_bearer(request, state_of(request).settings.api_key)


open_router = APIRouter()  # no key: health, thumbnails (signed URLs instead)
router = APIRouter(dependencies=[Depends(require_key)])


@open_router.get("/health")
async def health(request: Request) -> dict:
    """Open to all (load balancers ask it); what is served is told only with the key, when there is one."""
    s = state_of(request)
    try:
        check_bearer(request, s.settings.api_key)
    except ApiError:
        return {"status": "ok"}
    indexes = {name: {"kind": ix.kind, "count": ix.count, "approximate": ix.ann} for name, ix in s.indexes.items()}
    return {"status": "ok", "model": s.model_name, "dim": s.model.dim, "indexes": indexes, "queue": s.batcher.depth}


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(state_of(request).metrics.render(), media_type="text/plain; version=0.0.4")


# --------------------------------------------------------------------------------------------------
# search


async def query_vector(
    s: ServerState, body: dict, text_key: str, image_key: str, vector_key: str, first: bool = False
) -> torch.Tensor:
    """(1, d) unit query from exactly one of a text, an image or a vector field (`first`: the first
    of them given, in that order, as clip-retrieval's back end picks)."""
    text = fields.string(body, text_key, None, allow_empty=True, max_chars=fields.MAX_TEXT_CHARS) or None
    image = fields.string(body, image_key, None, allow_empty=True) or None
    vec = fields.vector(body, vector_key, s.model.dim)
    given = [k for k, v in ((text_key, text), (image_key, image), (vector_key, vec)) if v is not None]
    if len(given) != 1 and not (first and given):
        what = "none" if not given else " and ".join(given)
        raise ApiError(400, f"give exactly one of {text_key}, {image_key}, {vector_key} (got {what})")
    if text is not None:
        return await s.embed_texts([text])
    if image is not None:
        return await s.embed_images([image], image_key)
    q = torch.tensor([vec], dtype=torch.float32)
    return q / q.norm(dim=-1, keepdim=True)


def item_fields(item: dict) -> dict:
    """What a hit says about its item: path (or shard::key), caption, text."""
    out = {}
    if "path" in item:
        out["path"] = item["path"]
    elif "shard" in item:
        out["path"] = f"{item['shard']}::{item['key']}"
    for key in ("caption", "text"):
        if key in item:
            out[key] = item[key]
    return out


async def search_index(
    s: ServerState, ix: IndexView, q: torch.Tensor, k: int, exact: bool = False
) -> tuple[list[float], list[int], list[dict]]:
    """Top-k cosines, rows and items of one (1, d) query, off the event loop, from one
    generation. An approximate search
    re-reads at most --max-candidates rows; a scan of the whole file (`exact`, or an index without an
    approximate one) waits for one of --max-scans turns, and `exact` on an index that has an
    approximate one is refused past --max-exact-rows rows."""
    limit = s.settings.max_exact_rows
    if exact and ix.ann is not None and ix.count > limit:
        raise ApiError(
            400,
            f"exact: index {ix.name!r} has {ix.count} rows, over the {limit} an exact scan may read "
            "(--max-exact-rows); leave 'exact' out to search its approximate index",
        )
    if exact or ix.ann is None:
        async with s.scans:
            cos, rows = await run_in_threadpool(ix.search, q, k, True)
    else:
        cos, rows = await run_in_threadpool(ix.search, q, k, False, s.settings.max_candidates)
    rows_l = rows[0].tolist()
    items = await run_in_threadpool(ix.items, rows_l)
    return cos[0].tolist(), rows_l, items


@router.post("/v1/search")
async def search(request: Request) -> Response:
    s = state_of(request)
    body = await fields.read_json(request)
    ix = s.index(body.get("index"))
    k = fields.integer(body, "k", 10, 1, s.settings.max_k)
    exact = fields.boolean(body, "exact", False)
    q = await query_vector(s, body, "text", "image", "vector")
    ix = ix.view()  # one generation for the rows, their items and the thumbnail URLs
    cos, rows, items = await search_index(s, ix, q, k, exact)
    logits = s.model.from_cosine(torch.tensor(cos))  # (k,) t * cos + b
    hits = []
    for row, c, z, p, item in zip(rows, cos, logits.tolist(), torch.sigmoid(logits).tolist(), items):
        hit = {"row": row, **item_fields(item), "score": p, "logit": z, "cosine": c}
        if ix.kind == "image":
            hit["thumbnail"] = s.thumbnail_url(request, ix.name, row, ix.tag)
        hits.append(hit)
    return await fields.json_response({"index": ix.name, "k": k, "hits": hits})


# --------------------------------------------------------------------------------------------------
# classify and score


@router.post("/v1/classify")
async def classify(request: Request) -> dict:
    s = state_of(request)
    body = await fields.read_json(request)
    images = fields.strings(body, "images", s.settings.max_inputs)
    labels = fields.strings(body, "labels", s.settings.max_inputs, max_chars=fields.MAX_TEXT_CHARS)
    templates = fields.strings(body, "templates", MAX_TEMPLATES, False, fields.MAX_TEXT_CHARS) or list(
        DEFAULT_TEMPLATES
    )
    for i, t in enumerate(templates):
        if "{}" not in t:
            raise ApiError(400, f"templates[{i}]: {t!r} has no '{{}}' where the label goes")
        try:
            t.format("label")
        except (ValueError, IndexError, KeyError) as e:  # "{} {}", "{0}{x}", "{"
            raise ApiError(400, f"templates[{i}]: {t[:200]!r} is not a template with one '{{}}' ({e!r})") from None
    if len(labels) * len(templates) > MAX_LABEL_PROMPTS:
        raise ApiError(400, f"labels x templates: {len(labels) * len(templates)} prompts, over {MAX_LABEL_PROMPTS}")
    if not s.model.has_tokenizer:
        raise ApiError(400, "this model was loaded without a tokenizer, so it cannot embed labels")
    zimg = await s.embed_images(images, "images")
    prompts = [t.format(label) for label in labels for t in templates]  # label-major, as Model.label_embeddings
    zlab = await s.embed_texts(prompts, "labels x templates")  # through the queue: --max-queue applies
    zlab = l2_normalize(zlab.view(len(labels), len(templates), -1).mean(dim=1))
    probs = torch.sigmoid(s.model.logits(zimg, zlab))  # (n_img, n_labels)
    results = [{"probabilities": p.tolist(), "top": labels[int(p.argmax())]} for p in probs]
    return {"labels": labels, "results": results}


@router.post("/v1/score")
async def score(request: Request) -> dict:
    s = state_of(request)
    body = await fields.read_json(request)
    images = fields.strings(body, "images", s.settings.max_inputs)
    texts = fields.strings(body, "texts", s.settings.max_inputs, max_chars=fields.MAX_TEXT_CHARS)
    pairs = fields.boolean(body, "pairs", False)
    if pairs and len(images) != len(texts):
        raise ApiError(
            400, f"texts: pairs=true needs as many texts as images ({len(texts)} texts, {len(images)} images)"
        )
    ztxt = await s.embed_texts(texts)
    zimg = await s.embed_images(images, "images")
    logits = s.model.from_cosine((zimg * ztxt).sum(-1)) if pairs else s.model.logits(zimg, ztxt)
    return {"probabilities": torch.sigmoid(logits).tolist(), "logits": logits.tolist()}


# --------------------------------------------------------------------------------------------------
# thumbnails: items of an index only, by row


@open_router.get("/items/{index}/{row}/thumbnail")
async def thumbnail(request: Request, index: str, row: str) -> Response:
    s = state_of(request)
    check_thumbnail_url(request, s.settings.api_key, index, row)  # before anything about the index is told
    if index not in s.indexes:
        raise ApiError(404, f"index: no index {index!r}; this server has {sorted(s.indexes)}")
    ix = s.indexes[index].view()
    check_generation(request, index, ix.tag)  # 410, never the item that row holds in another generation
    n = int(row) if row.isascii() and row.isdigit() and len(row) <= 18 else -1  # not "²", not 5000 digits
    if not 0 <= n < ix.count:
        raise ApiError(404, f"row: {row[:40]!r} is not a row of index {index!r} (0 to {ix.count - 1})")
    cache: ThumbnailCache = request.app.state.thumbnails
    jpeg = cache.get((index, ix.tag, n))
    if jpeg is None:
        jpeg = await s.batcher.decode(_make_thumbnail, ix, n)
        cache.put((index, ix.tag, n), jpeg)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def _make_thumbnail(ix: IndexView, row: int) -> bytes:
    try:
        source = ix.image_source(row)
    except (OSError, KeyError) as e:  # its shard (or the member) is gone since it was indexed
        raise ApiError(404, f"row: the image of item {row} of index {ix.name!r} cannot be read ({e!r})") from e
    if source is None:
        raise ApiError(404, f"row: item {row} of index {ix.name!r} is a text; it has no image")
    try:
        return thumbnail_jpeg(source)
    except Exception as e:  # noqa: BLE001 - a file gone, truncated or over PIL's limit since it was indexed
        raise ApiError(404, f"row: the image of item {row} of index {ix.name!r} cannot be read ({e})") from e
