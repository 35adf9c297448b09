"""siglip serve: a model and its indexes behind HTTP (OpenAI embeddings, clip-retrieval, search page).

    siglip serve --model siglip_b16.pt --index photos=photos.index
    siglip serve --model m.pt --index photos=photos.index --index captions=captions.index \\
        --host 0.0.0.0 --port 8080 --cors https://my.site --public-url https://search.my.site   # key in $SIGLIP_API_KEY

Then open http://127.0.0.1:8000/ (the search page), or:

    curl -s localhost:8000/v1/search --json '{"text": "a dog on a beach", "k": 5}'
    curl -s localhost:8000/v1/embeddings --json '{"model": "siglip", "input": ["a dog", "a cat"]}'

Routes: POST /v1/embeddings (OpenAI), /v1/search, /v1/classify, /v1/score; clip-retrieval's
/indices-list, /knn-service, /metadata; GET /items/{index}/{row}/thumbnail, /health, /metrics.
Safe by default: listens on 127.0.0.1 only (another --host without --api-key prints a warning);
with --api-key every API needs `Authorization: Bearer KEY` (the page, /static and /health stay
open; thumbnail URLs are signed); bodies over --max-body get 413, images over --max-pixels get 400
before their pixels are decoded; no CORS unless --cors. Only requests naming this server in their
Host header are answered (DNS rebinding; --allowed-hosts for more names), POST bodies must be sent
as Content-Type: application/json (curl --json), and slow clients are cut off (--header-timeout,
--body-timeout, --request-timeout, --max-connections). An index built with other weights than
--model is refused at start. SIGTERM (or Ctrl-C) finishes the requests in flight, then exits.
Needs the serve extra: pip install 'siglip[serve]'.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re

from siglip.api import DTYPES

log = logging.getLogger("siglip.serve")
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.I)


def parse_size(text: str) -> int:
    """'20MB' -> 20 * 2**20 bytes (k/M/G are powers of 1024; a bare number is bytes)."""
    m = SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size like 20MB, 512KB or 1048576")
    unit = (m.group(2) or "b")[0].lower()
    return int(float(m.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit])


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and indexes")
    g.add_argument(
        "--model",
        required=True,
        help="checkpoint: our .pt, a Hugging Face folder, open_clip, big_vision, or a Hub id (org/name[@revision])",
    )
    g.add_argument(
        "--tokenizer",
        default=None,
        help="a SentencePiece model or tokenizer.json, a folder holding one, or a Hub id (its tokenizer files "
        "alone), when none lies beside the weights",
    )
    g.add_argument("--index", action="append", default=[], metavar="NAME=PATH", help="an index to serve (repeat)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="weights' dtype (default: as stored)")
    g = p.add_argument_group("network and safety")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument(
        "--api-key",
        default=os.environ.get("SIGLIP_API_KEY", ""),
        help="require Authorization: Bearer KEY on every API route (default: $SIGLIP_API_KEY, which ps does not show)",
    )
    g.add_argument("--cors", action="append", default=[], metavar="ORIGIN", help="allow this origin (repeat)")
    g.add_argument("--public-url", default="", help="base of the absolute URLs we hand out (behind a proxy)")
    g.add_argument("--max-body", type=parse_size, default="20MB", help="largest request body (413 above)")
    g.add_argument("--max-pixels", type=int, default=40_000_000, help="largest uploaded image, width x height")
    g.add_argument("--max-concurrent", type=int, default=256, help="requests in flight before 503 + Retry-After")
    g.add_argument("--url-ttl", type=int, default=3600, help="seconds a thumbnail URL works (then 410); default 1 hour")
    g.add_argument("--allowed-hosts", action="append", default=[], metavar="NAME[:PORT],...",
                   help="Host names answered besides localhost, 127.0.0.1, [::1] and --host (others: 421); "
                        "'*' answers any Host, which lets other web sites read this server (DNS rebinding)")  # fmt: skip
    g.add_argument("--max-connections", type=int, default=512, help="open connections before 503 (0: no limit)")
    g.add_argument("--header-timeout", type=float, default=10.0, help="s for a request's headers, else 408 (0: none)")
    g.add_argument("--body-timeout", type=float, default=60.0, help="s for a request's body, else 408 (0: none)")
    g.add_argument("--request-timeout", type=float, default=120.0, help="s for a whole request, else 503 (0: none)")
    g.add_argument("--max-k", type=int, default=1000, help="results per search, ids per /metadata (400 above)")
    g.add_argument("--max-candidates", type=int, default=10_000, help="rows an approximate search re-reads per query")
    g.add_argument(
        "--max-exact-rows", type=int, default=1_000_000, help='largest index a request may scan with "exact"'
    )
    g.add_argument("--max-scans", type=int, default=2, help="exact scans at once (the others wait their turn)")
    g = p.add_argument_group("batching")
    g.add_argument("--max-batch", type=int, default=32, help="inputs per model call (1: no batching)")
    g.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a request may wait for others")
    g.add_argument("--max-queue", type=int, default=256, help="requests waiting before 503 + Retry-After")
    g.add_argument("--decode-threads", type=int, default=2, help="threads decoding uploaded images")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--json", action="store_true", help="print the address and what is served as one JSON line")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from siglip.serve.app import create_app
    except ImportError as e:
        raise RuntimeError(f"siglip serve needs FastAPI and uvicorn ({e}): pip install 'siglip[serve]'") from e
    from siglip.api import load
    from siglip.serve.connections import check_open_files, uvicorn_limits
    from siglip.serve.indexes import open_indexes
    from siglip.serve.state import ServerState, Settings

    model = load(args.model, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer)
    indexes = open_indexes(args.index, model.fingerprint, args.model, model.dim)
    settings = Settings(
        api_key=args.api_key,
        max_body=args.max_body,
        max_pixels=args.max_pixels,
        max_concurrent=args.max_concurrent,
        max_k=args.max_k,
        max_candidates=args.max_candidates,
        max_exact_rows=args.max_exact_rows,
        max_scans=args.max_scans,
        public_url=args.public_url,
        url_ttl_s=args.url_ttl,
        cors=args.cors,
        host=args.host,
        port=args.port,
        allowed_hosts=args.allowed_hosts,
        body_timeout_s=args.body_timeout,
        request_timeout_s=args.request_timeout,
    )
    batching = dict(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue)
    state = ServerState.build(model, indexes, settings, decode_threads=args.decode_threads, **batching)
    if not is_loopback(args.host) and not args.api_key:
        log.warning(
            "listening on %s without --api-key: anyone who can reach this port can use the model and read "
            "the indexes' captions and thumbnails. Pass --api-key KEY, or keep --host 127.0.0.1",
            args.host,
        )
    if args.host in ("0.0.0.0", "::") and not args.allowed_hosts:
        log.warning(
            "listening on %s: only requests whose Host header is localhost, 127.0.0.1 or [::1] are answered "
            "(others get 421); pass --allowed-hosts with the names or addresses clients use",
            args.host,
        )
    url = f"http://{args.host if ':' not in args.host else f'[{args.host}]'}:{args.port}"
    summary = {"url": url, "model": args.model, "indexes": {n: ix.count for n, ix in indexes.items()}}
    print(json.dumps(summary) if args.json else f"siglip serve: {url}/  model {model!r}, indexes {summary['indexes']}")
    app = create_app(state)
    check_open_files(args.max_connections)
    edge = uvicorn_limits(args.max_connections, args.header_timeout)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=30, **edge)
    return 0
