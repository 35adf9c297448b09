"""Reading a request's JSON body field by field, each refusal a 400 that names the field.

Bodies are parsed whatever the Content-Type says: clip-front posts its JSON as text/plain (a plain
`fetch` with a string body), and clip-retrieval's client sends none at all.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from siglip.serve.limits import ApiError

MISSING = object()
MAX_TEXT_CHARS = 65_536  # a text far past any model's context length is a mistake or an attack
FLOAT32_MAX = float(np.finfo(np.float32).max)
BIG = 1 << 20  # bytes of JSON parsed or written in a worker thread rather than on the event loop


async def read_json(request: Request) -> dict:
    """The body as a JSON object; 400 for an empty body, malformed JSON or a non-object."""
    try:
        raw = await request.body()
    except ClientDisconnect as e:  # gone mid-body: nobody reads this answer, but it is not our fault (no 500)
        raise ApiError(400, "request body: the client disconnected before sending all of it") from e
    if not raw.strip():
        raise ApiError(400, "request body: empty; expected a JSON object")
    try:
        body = await run_in_threadpool(json.loads, raw) if len(raw) > BIG else json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, a 5000-digit number, [[[[...
        raise ApiError(400, f"request body: malformed JSON ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(body, dict):
        raise ApiError(400, f"request body: expected a JSON object, got {type(body).__name__}")
    return body


async def json_response(payload: dict | list) -> Response:
    """`payload` as a JSON response, serialised off the event loop (an embeddings answer of 2048 rows
    of 768 floats is ~30 MB of text)."""
    text = await run_in_threadpool(json.dumps, payload, separators=(",", ":"))
    return Response(text, media_type="application/json")


def _type_name(value: Any) -> str:
    return (
        "null"
        if value is None
        else {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)
    )


def check_unicode(value: str, key: str) -> None:
    """400 unless `value` encodes as UTF-8: JSON's `\\ud800` escapes give lone surrogates, which
    pass every type check and then fail the tokenizer (or the answer's encoding) deep inside."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(400, f"{key}: not valid Unicode (a lone surrogate at character {e.start})") from None


def check_chars(value: str, key: str, max_chars: int | None) -> None:
    check_unicode(value, key)
    if max_chars is not None and len(value) > max_chars:
        raise ApiError(400, f"{key}: {len(value)} characters, over the limit of {max_chars} for a text")


def string(
    body: dict, key: str, default: Any = MISSING, allow_empty: bool = False, max_chars: int | None = None
) -> Any:
    """A string field (None counts as absent) of at most `max_chars` characters."""
    value = body.get(key)
    if value is None:
        if default is MISSING:
            raise ApiError(400, f"{key}: required (a string)")
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"{key}: expected a string, got {_type_name(value)}")
    if not value and not allow_empty:
        raise ApiError(400, f"{key}: empty string")
    check_chars(value, key, max_chars)
    return value


def integer(body: dict, key: str, default: int, lo: int, hi: int) -> int:
    """An integer field in [lo, hi] (absent or null: `default`)."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ApiError(400, f"{key}: expected an integer, got {_type_name(value)}")
    if not lo <= value <= hi:
        raise ApiError(400, f"{key}: {value} is out of range [{lo}, {hi}]")
    return value


def boolean(body: dict, key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{key}: expected true or false, got {_type_name(value)}")
    return value


def strings(body: dict, key: str, max_items: int, required: bool = True, max_chars: int | None = None) -> list[str]:
    """A non-empty list of non-empty strings (at most `max_items`, each at most `max_chars`);
    absent and not required: []."""
    value = body.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise ApiError(400, f"{key}: expected an array of strings, got {_type_name(value)}")
    if not value:
        raise ApiError(400, f"{key}: empty array")
    if len(value) > max_items:
        raise ApiError(400, f"{key}: {len(value)} items, over the limit of {max_items} per request")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise ApiError(400, f"{key}[{i}]: expected a string, got {_type_name(v)}")
        if not v:
            raise ApiError(400, f"{key}[{i}]: empty string")
        check_chars(v, f"{key}[{i}]", max_chars)
    return value


def _as_float(v: int | float) -> float:
    try:
        return float(v)
    except OverflowError:  # an integer of 400 digits
        return math.inf


def vector(body: dict, key: str, dim: int) -> list[float] | None:
    """An embedding: `dim` numbers finite in float32 (absent: None), returned at unit length; 400 for a
    wrong length, a number past float32's range (1e39 would give NaN scores) or a vector that is zero
    once cast to float32 (1e-46 rounds to 0)."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise ApiError(400, f"{key}: expected an array of {dim} numbers, got {_type_name(value)}")
    if len(value) == 1 and isinstance(value[0], list):  # clip-retrieval sends [[...]] too
        value = value[0]
    if len(value) != dim:
        raise ApiError(400, f"{key}: {len(value)} numbers, but the model's embeddings have {dim}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v := _as_float(v)):
            raise ApiError(400, f"{key}[{i}]: expected a finite number, got {value[i]!r}"[:200])
        if abs(v) > FLOAT32_MAX:
            raise ApiError(400, f"{key}[{i}]: {v!r} is out of float32's range (at most {FLOAT32_MAX:.4g})"[:200])
    x32 = np.asarray(value, dtype=np.float64).astype(np.float32)  # what the search will see
    if not x32.any():
        raise ApiError(400, f"{key}: the zero vector has no direction (in float32: numbers under 1e-45 are 0)")
    x = x32.astype(np.float64)
    x /= np.abs(x).max()  # scaled first: the squares of 1e-40 or 1e38 would under- or overflow
    return (x / np.linalg.norm(x)).astype(np.float32).tolist()
