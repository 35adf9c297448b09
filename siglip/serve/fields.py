"""Reading a request's JSON body field by field, each refusal a 400 that names the field.

Bodies are parsed whatever the Content-Type says: clip-front posts its JSON as text/plain (a plain
`fetch` with a string body), and clip-retrieval's client sends none at all.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request

from siglip.serve.limits import ApiError

MISSING = object()


async def read_json(request: Request) -> dict:
    """The body as a JSON object; 400 for an empty body, malformed JSON or a non-object."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "request body: empty; expected a JSON object")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body: malformed JSON ({e})") from e
    if not isinstance(body, dict):
        raise ApiError(400, f"request body: expected a JSON object, got {type(body).__name__}")
    return body


def _type_name(value: Any) -> str:
    return (
        "null"
        if value is None
        else {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)
    )


def string(body: dict, key: str, default: Any = MISSING, allow_empty: bool = False) -> Any:
    """A string field (None counts as absent)."""
    value = body.get(key)
    if value is None:
        if default is MISSING:
            raise ApiError(400, f"{key}: required (a string)")
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"{key}: expected a string, got {_type_name(value)}")
    if not value and not allow_empty:
        raise ApiError(400, f"{key}: empty string")
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


def strings(body: dict, key: str, max_items: int, required: bool = True) -> list[str]:
    """A non-empty list of non-empty strings (at most `max_items`); absent and not required: []."""
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
    return value


def vector(body: dict, key: str, dim: int) -> list[float] | None:
    """An embedding: `dim` finite numbers (absent: None); 400 for a wrong length or a zero vector."""
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
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ApiError(400, f"{key}[{i}]: expected a finite number, got {v!r}"[:200])
    if not any(value):
        raise ApiError(400, f"{key}: the zero vector has no direction")
    return [float(v) for v in value]
