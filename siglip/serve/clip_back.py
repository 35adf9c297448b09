"""clip-retrieval's back-end API, answered as its Flask `clip_back` answers it, so its `ClipClient`
and its clip-front page work against this server unchanged.

    GET  /indices-list  -> ["name", ...]
    POST /knn-service   {"text" | "image" (base64) | "embedding_input", "indice_name", "modality"?,
                         "num_images"?: 40, "num_result_ids"?: num_images, ...}
                        -> [{"id": row, "similarity": cosine, "caption"?, "url"?}, ...]
    POST /metadata      {"ids": [row, ...], "indice_name"} -> [{"id", "metadata": {"caption"?, "url"?}}]

As in clip_back, `num_result_ids` hits come back and only the first `num_images` carry metadata
(clip-front fetches the rest with /metadata as the page scrolls); `similarity` is the inner product
of unit vectors (the cosine). An image item's `url` is the absolute URL of our thumbnail route, so
the page shows it from any origin allowed by --cors. Differences: each served index has one kind of
rows, so `modality` is checked but the named index is searched whatever it says; `image_url` is
refused (this server fetches nothing); as in clip_back, a text wins over an image, an image over
an embedding; `num_result_ids` is capped at --max-k (clip-front asks for 3,000; `num_images` past it
is a 400); the safety, violence, deduplication and aesthetic options are accepted and ignored (they
need models this server does not have). Bodies are read as JSON whatever their Content-Type
(clip-front sends text/plain, the client none).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from siglip.serve import fields
from siglip.serve.api import item_fields, query_vector, require_key, search_index, state_of
from siglip.serve.indexes import IndexView
from siglip.serve.limits import ApiError
from siglip.serve.state import ServerState

router = APIRouter(dependencies=[Depends(require_key)])


@router.get("/indices-list")
async def indices_list(request: Request) -> list[str]:
    return list(state_of(request).indexes)


def metadata_of(s: ServerState, request: Request, ix: IndexView, row: int, item: dict) -> dict:
    """clip-retrieval's metadata columns for one item: caption (or the text), url (our thumbnail)."""
    meta = item_fields(item)
    out = {"caption": meta.get("caption", meta.get("text", ""))}
    if ix.kind == "image":
        out["url"] = s.thumbnail_url(request, ix.name, row, ix.tag)
    return out


@router.post("/knn-service")
async def knn_service(request: Request) -> list[dict]:
    s = state_of(request)
    body = await fields.read_json(request)
    if body.get("image_url"):
        raise ApiError(400, "image_url: this server does not fetch URLs; send the image as base64 in 'image'")
    ix = s.index(body.get("indice_name"), "indice_name")
    modality = fields.string(body, "modality", "image")
    if modality not in ("image", "text"):
        raise ApiError(400, f"modality: {modality!r}; choose 'image' or 'text'")
    num_images = fields.integer(body, "num_images", 40, 1, s.settings.max_k)
    num_ids = min(fields.integer(body, "num_result_ids", num_images, 1, 1 << 30), s.settings.max_k)  # clip-front: 3000
    q = await query_vector(s, body, "text", "image", "embedding_input", first=True)
    ix = ix.view()  # one generation for the rows, their items and the thumbnail URLs
    cos, rows, items = await search_index(s, ix, q, max(num_ids, num_images))
    out = []
    for i, (row, c, item) in enumerate(zip(rows, cos, items)):
        hit = metadata_of(s, request, ix, row, item) if i < num_images else {}
        out.append(hit | {"id": row, "similarity": c})
    return out


@router.post("/metadata")
async def metadata(request: Request) -> list[dict]:
    s = state_of(request)
    body = await fields.read_json(request)
    ids = body.get("ids")
    if not isinstance(ids, list):
        raise ApiError(400, f"ids: expected an array of row numbers, got {type(ids).__name__}")
    if not ids:
        return []
    ix = s.index(body.get("indice_name"), "indice_name").view()
    if len(ids) > s.settings.max_k:
        raise ApiError(400, f"ids: {len(ids)} ids, over the limit of {s.settings.max_k}")
    for i, row in enumerate(ids):
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < ix.count:
            raise ApiError(400, f"ids[{i}]: {row!r} is not a row of index {ix.name!r} (0 to {ix.count - 1})")
    items = await run_in_threadpool(ix.items, ids)
    return [{"id": row, "metadata": metadata_of(s, request, ix, row, it)} for row, it in zip(ids, items)]
