"""What keeps the service safe to expose: the API key, the body-size cap, the body and request
deadlines, and one error shape.

Every error leaves as `{"error": {"message": ..., "type": ...}}` with a 4xx status (5xx only for the
server's own faults and a full queue), the message naming the field, file or header at fault, as
OpenAI's API answers. `ApiError` is raised anywhere a request is refused; `install_error_handlers`
turns it, FastAPI's validation errors, unknown routes and anything unexpected into that shape.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("siglip.serve")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
TYPES |= {405: "invalid_request_error", 413: "request_too_large", 422: "invalid_request_error"}
TYPES |= {429: "rate_limit_error", 503: "overloaded_error"}
TYPES |= {408: "timeout_error", 415: "invalid_request_error", 421: "permission_error"}


class ApiError(Exception):
    """A refused request: HTTP `status`, a `message` that names the field at fault, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, type: str = ""):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}
        self.type = type or TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def error_response(status: int, message: str, type: str = "", headers: dict[str, str] | None = None) -> JSONResponse:
    kind = type or TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """ApiError, validation errors, 404/405 and unexpected exceptions -> the one error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.message, e.type, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return error_response(400, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        detail = e.detail if isinstance(e.detail, str) else str(e.detail)
        if e.status_code == 404:
            detail = f"no route {request.method} {request.url.path}"
        return error_response(e.status_code, detail, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, f"internal error ({type(e).__name__}); the server log has the details")


# --------------------------------------------------------------------------------------------------
# the API key: a Bearer header, or a signature on a thumbnail URL (an <img> sends no header)


def check_bearer(request: Request, api_key: str) -> None:
    """401 unless the request carries `Authorization: Bearer <api_key>` (no key configured: open)."""
    if not api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise ApiError(401, "missing header Authorization: Bearer <key> (this server was started with --api-key)")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "header Authorization: the Bearer key is not this server's --api-key")


def sign(api_key: str, index: str, row: int | str) -> str:
    """The `sig` query parameter of a thumbnail URL: HMAC-SHA256 of "index/row" under the key (32 hex)."""
    return hmac.new(api_key.encode(), f"{index}/{row}".encode(), hashlib.sha256).hexdigest()[:32]


def check_signature(request: Request, api_key: str, index: str, row: int | str) -> None:
    """A thumbnail passes with a valid Bearer header or a valid `sig`; 401 without either, 403 if forged."""
    if not api_key:
        return
    sig = request.query_params.get("sig")
    if sig is None:
        check_bearer(request, api_key)
        return
    if not secrets.compare_digest(sig.encode(), sign(api_key, index, row).encode()):
        raise ApiError(403, "query parameter sig: not a valid signature for this thumbnail")


# --------------------------------------------------------------------------------------------------
# the body-size cap, the cap on requests in flight and their deadlines, as ASGI middleware: before any
# route reads a body


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


class BodyLimit:
    """413 for a body over `max_bytes`: at once from Content-Length, or while streaming a chunked body
    (the body is never buffered past the limit). 503 + Retry-After when `max_active` requests are in
    flight already (/health excepted), so memory stays under about max_active x max_bytes.
    Deadlines, so that no client holds one of those `max_active` slots for long: 408 when the body has
    not all come `body_timeout_s` after the headers (a client sending a byte at a time), 503 when the
    whole request (body, queue, model) takes over `request_timeout_s`; 0 turns either off."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_active: int = 256, retry_after_s: int = 1,
                 body_timeout_s: float = 60.0, request_timeout_s: float = 120.0):  # fmt: skip
        self.app, self.max_bytes, self.max_active, self.retry = app, max_bytes, max_active, retry_after_s
        self.body_timeout, self.request_timeout = body_timeout_s or None, request_timeout_s or None
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send, int(declared) if declared.isdigit() else -1)
        if self.active >= self.max_active and scope["path"] != "/health":
            message = f"the server has {self.active} requests in flight (--max-concurrent); retry"
            response = error_response(503, message, headers={"Retry-After": str(self.retry)})
            return await response(scope, receive, send)
        self.active += 1
        try:
            await self._counted(scope, receive, send)
        finally:
            self.active -= 1

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        seen, started, body_done = 0, False, False
        body_deadline = loop.time() + (self.body_timeout or 0)

        async def counted() -> Message:
            nonlocal seen, body_done
            if body_done or self.body_timeout is None:  # after the body: a wait for the client to go away
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(body_deadline - loop.time(), 0))
                except asyncio.TimeoutError:
                    raise BodyTooSlow from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        start = loop.time()
        try:
            await asyncio.wait_for(self.app(scope, counted, tracked), self.request_timeout)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, seen)
        except BodyTooSlow:
            if not started:
                message = f"request body: {seen} bytes came in {self.body_timeout:g} s, not all of it (--body-timeout)"
                await error_response(408, message, headers={"Connection": "close"})({"type": "http"}, _no_body, send)
        except asyncio.TimeoutError:
            if self.request_timeout is None or loop.time() - start < self.request_timeout:
                raise  # not ours: the route's own
            log.warning("%s %s: over --request-timeout %g s; cancelled", scope["method"], scope["path"],
                        self.request_timeout)  # fmt: skip
            if not started:
                message = f"the request took over {self.request_timeout:g} s (--request-timeout); retry later"
                headers = {"Retry-After": str(self.retry), "Connection": "close"}
                await error_response(503, message, headers=headers)({"type": "http"}, _no_body, send)

    async def _refuse(self, send: Send, size: int) -> None:
        what = f"{size} bytes" if size >= 0 else "an invalid Content-Length"
        message = f"request body: {what}, over the limit of {self.max_bytes} bytes (--max-body)"
        response = error_response(413, message, headers={"Connection": "close"})
        await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
