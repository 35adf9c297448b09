"""`create_app(state)`: the FastAPI application of `siglip serve`, its routes, limits and page.

    GET /                      the search page (siglip/serve/static/index.html)   no key
    GET /static/{file}         the page's other files                             no key
    GET /health                liveness and what is served                        no key
    /v1/embeddings             OpenAI embeddings (openai.py)
    /v1/search /v1/classify /v1/score /metrics, /items/{index}/{row}/thumbnail (api.py)
    /indices-list /knn-service /metadata    clip-retrieval's back end (clip_back.py)

Layers, outermost first: CORS (only with --cors), the request metrics, the Host allowlist and the
JSON Content-Type rule (gate.py), the body-size cap and the body and request deadlines (limits.py), the routes (each API route checks the Bearer key). The connection limits and the
headers' deadline are uvicorn's (connections.py). The batching worker starts with the app and stops
after uvicorn has drained the requests in flight (SIGTERM).
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from siglip.serve import api, clip_back, openai
from siglip.serve.gate import AllowedHosts, RequestGate
from siglip.serve.images import ThumbnailCache
from siglip.serve.limits import BodyLimit, install_error_handlers
from siglip.serve.metrics import Metrics
from siglip.serve.state import ServerState

STATIC = Path(__file__).resolve().parent / "static"


class RequestMetrics:
    """Counts every answered request by route template, method and status, with its latency."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or ("/static" if scope["path"].startswith("/static/") else "other")
            self.metrics.request(name, scope["method"], status, time.perf_counter() - start)


def create_app(state: ServerState) -> FastAPI:
    """The application serving `state`'s model and indexes with `state.settings`' limits."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.batcher.start()
        yield
        await state.batcher.stop()

    app = FastAPI(title="siglip serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.siglip = state
    app.state.thumbnails = ThumbnailCache()
    install_error_handlers(app)
    for router in (api.open_router, api.router, openai.router, clip_back.router):
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    limits = state.settings
    app.add_middleware(
        BodyLimit, max_bytes=limits.max_body, max_active=limits.max_concurrent, retry_after_s=limits.retry_after_s,
        body_timeout_s=limits.body_timeout_s, request_timeout_s=limits.request_timeout_s,
    )  # fmt: skip
    hosts = AllowedHosts(limits.host, limits.port, limits.allowed_hosts, limits.public_url)
    app.add_middleware(RequestGate, hosts=hosts)
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    if state.settings.cors:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=state.settings.cors,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After"],
        )
    return app
