"""The OpenAI embeddings API, so the official `openai` client (and anything that speaks it) works:

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything")
    client.embeddings.create(model="siglip", input=["a dog", "data:image/png;base64,iVBOR..."])

GET /v1/models lists the one model served. POST /v1/embeddings {"input": str | [str], "model": str, "encoding_format"?: "float" | "base64",
"dimensions"?: d} -> {"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
"model", "usage": {"prompt_tokens", "total_tokens"}}. A string that is a `data:image/...;base64,`
URL embeds as an image, every other string as a text; rows are unit-norm float32 (base64: their
little-endian bytes, as OpenAI encodes them). Usage counts a text's tokens (with EOS, at most the
model's text length) and an image's patches. Token-id arrays are refused (the tokenizer is ours).
"""

from __future__ import annotations

import asyncio
import base64

import torch
from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from siglip.serve import fields
from siglip.serve.api import require_key, state_of
from siglip.serve.images import is_image_data_url
from siglip.serve.limits import ApiError
from siglip.serve.state import ServerState

router = APIRouter(dependencies=[Depends(require_key)])


def read_inputs(body: dict, max_items: int) -> list[str]:
    value = body.get("input")
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, int) or isinstance(v, list) for v in value):
        raise ApiError(400, "input: token-id arrays are not supported; send the texts as strings")
    return fields.strings({"input": value}, "input", max_items)


def usage_tokens(s: ServerState, texts: list[str], n_images: int) -> int:
    """Text tokens (EOS included, capped at the text length) plus image patches."""
    tok, cfg = s.model.tokenizer if texts else None, s.model.config
    text_tokens = sum(min(len(tok.encode(t)), tok.length) for t in texts) if texts else 0
    return text_tokens + n_images * (cfg.image_size // cfg.patch_size) ** 2


@router.get("/v1/models")
async def models(request: Request) -> dict:
    """The one model served, as OpenAI lists models (clients and tools ask before embedding)."""
    model = {"id": state_of(request).model_name, "object": "model", "created": 0, "owned_by": "siglip"}
    return {"object": "list", "data": [model]}


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    s = state_of(request)
    body = await fields.read_json(request)
    inputs = read_inputs(body, s.settings.max_inputs)
    model = fields.string(body, "model", s.model_name)
    encoding = fields.string(body, "encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise ApiError(400, f"encoding_format: {encoding!r}; choose 'float' or 'base64'")
    dims = fields.integer(body, "dimensions", s.model.dim, 1, 1 << 20)
    if dims != s.model.dim:
        raise ApiError(400, f"dimensions: this model's embeddings have {s.model.dim} dimensions, not {dims}")
    is_image = [is_image_data_url(v) for v in inputs]
    for i, (v, img) in enumerate(zip(inputs, is_image)):
        if not img:
            fields.check_chars(v, f"input[{i}]", fields.MAX_TEXT_CHARS)
    texts = [v for v, img in zip(inputs, is_image) if not img]
    rows = await embed_mixed(s, inputs, is_image)
    data = [{"object": "embedding", "index": i, "embedding": encode(r, encoding)} for i, r in enumerate(rows)]
    tokens = await run_in_threadpool(usage_tokens, s, texts, sum(is_image))  # tokenising: off the event loop
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return await fields.json_response({"object": "list", "data": data, "model": model, "usage": usage})


async def embed_mixed(s: ServerState, inputs: list[str], is_image: list[bool]) -> list[torch.Tensor]:
    """Texts and images of one request, each through its own queue at the same time: rows in input order."""
    texts = [v for v, img in zip(inputs, is_image) if not img]
    images = [(i, v) for i, (v, img) in enumerate(zip(inputs, is_image)) if img]

    async def nothing() -> torch.Tensor:
        return torch.zeros(0, s.model.dim)

    ztxt, zimg = await together(
        s.embed_texts(texts) if texts else nothing(),
        s.embed_images([v for _, v in images], "input", [i for i, _ in images]) if images else nothing(),
    )
    ti, ii = iter(ztxt), iter(zimg)
    return [next(ii) if img else next(ti) for img in is_image]


async def together(*coros) -> list:
    """asyncio.gather, but the first failure cancels the others (and waits for them): a bad image must
    not leave its request's texts queued for the model after the 400."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def encode(row: torch.Tensor, encoding: str) -> list[float] | str:
    if encoding == "float":
        return row.tolist()
    return base64.b64encode(row.numpy().astype("<f4").tobytes()).decode("ascii")
