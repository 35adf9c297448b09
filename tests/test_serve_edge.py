"""`siglip serve` at the HTTP edge (issue 31): slow clients are cut off by deadlines and a bounded
number of connections, only this server's Host names are answered, POST bodies must be declared
JSON (clip-front's text/plain excepted), the metrics' labels stay bounded whatever method a client
invents, and uploads decode only the common image formats. Each test names the failure it saw on
the code before these fixes. The slow-client tests use raw sockets on 127.0.0.1 against a server
started with deadlines of 1.5 s."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import select
import socket
import threading
import time

import httpx
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="siglip serve needs the serve extra: pip install 'siglip[serve]'")

from siglip.cli import main  # noqa: E402
from siglip.index import read_meta  # noqa: E402
from siglip.serve.gate import AllowedHosts, RequestGate  # noqa: E402
from siglip.serve.images import open_image  # noqa: E402
from siglip.serve.limits import ApiError, BodyLimit  # noqa: E402
from siglip.serve.metrics import Metrics  # noqa: E402
from tests.conftest import write_image  # noqa: E402
from tests.serve_helpers import Server  # noqa: E402

DEADLINE = 1.5  # --header-timeout and --body-timeout of the test server, s
SLOTS = 4  # its --max-concurrent
CONNECTIONS = 40  # its --max-connections
JSON = {"Content-Type": "application/json"}


def small_world(root, tokenizer) -> dict:
    """A tiny random model and `siglip embed`'s index of 3 small images (the least a server needs)."""
    import torch

    import siglip
    from siglip.config import ModelConfig
    from siglip.model import SigLIP

    torch.manual_seed(0)
    net = SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size))
    siglip.save_model(root / "m.pt", net, tokenizer, "bicubic")
    for i, colour in enumerate([(220, 30, 30), (30, 200, 40), (20, 40, 230)]):
        write_image(root / "photos" / f"{i}.png", colour, (16 + i, 14))
    args = ["embed", str(root / "photos"), "--out", str(root / "photos.index"), "--model", str(root / "m.pt")]
    assert main([*args, "--workers", "0"]) == 0
    return {"model": root / "m.pt", "photos": root / "photos.index"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("edge")
    w = small_world(root, tokenizer)
    args = ["--model", str(w["model"]), "--index", f"photos={w['photos']}", "--max-concurrent", str(SLOTS),
            "--max-connections", str(CONNECTIONS), "--header-timeout", str(DEADLINE), "--body-timeout", str(DEADLINE)]  # fmt: skip
    server = Server(args, root / "server.log")
    yield w | {"server": server, "url": server.url, "port": server.port}
    server.stop()
    log = (root / "server.log").read_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 200 :][:3000]


def search(world, **kw) -> httpx.Response:
    return httpx.post(world["url"] + "/v1/search", json={"text": "a cat", "k": 2}, timeout=30, **kw)


def dribble(socks: list[socket.socket], payload: bytes, seconds: float, every: float = 0.2) -> dict[int, tuple]:
    """Send `payload` to every socket a byte per `every` s until the server answers and closes it.
    -> {socket's index: (seconds until closed, bytes received)}; a socket still open after `seconds`
    is missing."""
    start, pos, done = time.monotonic(), 0, {}
    while len(done) < len(socks) and time.monotonic() - start < seconds:
        for i, s in enumerate(socks):
            if i not in done and pos < len(payload):
                try:
                    s.send(payload[pos : pos + 1])
                except OSError:  # reset: closed without an answer
                    done[i] = (time.monotonic() - start, b"")
        pos += 1
        open_ = {s: i for i, s in enumerate(socks) if i not in done}
        readable, _, _ = select.select(list(open_), [], [], every)
        for s in readable:
            answer = b""
            try:
                while chunk := s.recv(65536):
                    answer += chunk
            except OSError:
                pass
            done[open_[s]] = (time.monotonic() - start, answer)
    for s in socks:
        s.close()
    return done


def connect(world, n: int) -> list[socket.socket]:
    socks = [socket.create_connection(("127.0.0.1", world["port"]), timeout=10) for _ in range(n)]
    for s in socks:
        s.settimeout(5)
    return socks


# --------------------------------------------------------------------------------------------------
# finding 2: time limits


def test_slow_headers_are_cut_off_and_a_normal_client_is_served_meanwhile(world):
    """24 clients sending their headers a byte every 0.2 s: each gets 408 and is closed after the
    header deadline, and a normal client is served all along. Before: uvicorn has no deadline on
    headers, so every such connection stayed open (here: still open after 8 s)."""
    socks = connect(world, 24)
    head = b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 200
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(dribble(socks, head, seconds=8)))
    worker.start()
    codes = []
    while worker.is_alive() and len(codes) < 5:
        start = time.monotonic()
        codes.append(search(world).status_code)
        assert time.monotonic() - start < 5
        time.sleep(0.2)
    worker.join()
    assert codes and set(codes) == {200}, codes
    assert len(result) == 24, f"{24 - len(result)} slow connections still open after 8 s"
    for seconds, answer in result.values():
        assert answer.startswith(b"HTTP/1.1 408") and b"--header-timeout" in answer, answer[:200]
        assert DEADLINE - 0.1 < seconds < DEADLINE + 4


def test_kept_alive_connections_get_the_deadline_too(world):
    """After an answer, the next request's headers sent a byte at a time, or the rest of a body no
    route reads (a 404 before the body): closed at the deadline. Before: uvicorn's keep-alive timer
    was the only bound there, and each byte cancelled it, so both stayed open for good."""
    a, b = connect(world, 2)
    a.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert a.recv(65536).startswith(b"HTTP/1.1 200")
    b.sendall(b"POST /nothing HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n{")  # fmt: skip
    assert b.recv(65536).startswith(b"HTTP/1.1 404")
    result = dribble([a, b], b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * 100, seconds=8)
    assert len(result) == 2, "a kept-alive connection is still open after 8 s"
    assert b"HTTP/1.1 408" in result[0][1] and result[0][0] < DEADLINE + 4  # (after the rest of the 200's body)
    assert result[1][0] < DEADLINE + 4


def test_slow_bodies_get_408_and_free_their_slots(world):
    """As many slow bodies as --max-concurrent: they hold every slot (a normal request gets 503),
    then each gets 408 at the body deadline and a normal request gets 200. Before: a body sent a byte
    at a time held its slot forever, so every request but /health got 503."""
    socks = connect(world, SLOTS)
    head = (b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 500\r\n\r\n")  # fmt: skip
    for s in socks:
        s.sendall(head)
    time.sleep(0.3)
    assert search(world).status_code == 503  # the slow bodies hold all the slots
    result = dribble(socks, b"{" + b" " * 499, seconds=8)
    assert len(result) == SLOTS, f"{SLOTS - len(result)} slow bodies still held after 8 s"
    for seconds, answer in result.values():
        assert answer.startswith(b"HTTP/1.1 408") and b"--body-timeout" in answer, answer[:300]
        assert seconds < DEADLINE + 4
    assert search(world).status_code == 200
    assert world["server"].healthy()


def test_connections_are_bounded_and_idle_ones_are_closed(world):
    """--max-connections open and silent: the next request gets 503 at once (not a hang), and once the
    silent ones pass the header deadline requests are served again. Before: no connection limit and
    no deadline; silent connections stayed open for good."""
    socks = connect(world, CONNECTIONS - 1)
    time.sleep(0.2)
    assert search(world).status_code == 503
    closed = dribble(socks, b"", seconds=DEADLINE + 4)
    assert len(closed) == CONNECTIONS - 1
    assert search(world).status_code == 200


def test_body_and_request_deadlines_in_the_middleware():
    """BodyLimit on stand-in apps: a body that stops coming gets 408 at the body deadline; a route
    that takes too long gets 503 at the request deadline (and is cancelled); after the body, waiting
    for the client to go away is not cut off; the slot count returns to 0. Before: no deadline."""

    async def reads_body(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def slow_route(scope, receive, send):
        await receive()
        await asyncio.sleep(30)

    async def waits_for_disconnect(scope, receive, send):
        await receive()  # the whole (empty) body
        message = await asyncio.wait_for(receive(), 1.0)  # the client leaving, after the body deadline
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["type"].encode()})

    async def run(app, receive, **deadlines):
        limit, sent = BodyLimit(app, max_bytes=1000, **deadlines), []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/search", "headers": []}
        start = time.monotonic()
        await limit(scope, receive, send)
        assert limit.active == 0
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), time.monotonic() - start

    async def never():
        if not hasattr(never, "first"):
            never.first = True
            return {"type": "http.request", "body": b"{", "more_body": True}
        await asyncio.sleep(60)

    async def empty():
        await asyncio.sleep(0.5)
        return {"type": "http.request", "body": b"", "more_body": False} if not hasattr(empty, "n") else None

    status, body, took = asyncio.run(run(reads_body, never, body_timeout_s=0.3))
    assert status == 408 and b"--body-timeout" in body and 0.25 < took < 2
    status, body, took = asyncio.run(run(slow_route, empty, request_timeout_s=0.8))
    assert status == 503 and b"--request-timeout" in body and 0.7 < took < 3

    calls = []

    async def body_then_disconnect():
        calls.append(1)
        if len(calls) == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(0.6)  # past the body deadline below
        return {"type": "http.disconnect"}

    status, body, _ = asyncio.run(run(waits_for_disconnect, body_then_disconnect, body_timeout_s=0.2))
    assert status == 200 and body == b"http.disconnect"


def test_the_command_gives_uvicorn_the_connection_limits(world, monkeypatch, caplog):
    """--max-connections, --header-timeout and a keep-alive bound reach uvicorn.run. Before: uvicorn
    ran with no limit_concurrency and its stock protocol (no header deadline)."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    args = ["serve", "--model", str(world["model"]), "--max-connections", "77", "--header-timeout", "3"]
    assert main(args) == 0
    assert calls[0]["limit_concurrency"] == 77 and calls[0]["http"].header_timeout == 3
    assert calls[0]["timeout_keep_alive"] <= 5 and calls[0]["ws"] == "none"
    assert main([*args, "--allowed-hosts", "a:b:c:x"]) == 1  # a malformed entry is refused at start
    with caplog.at_level(logging.WARNING, logger="siglip.serve"):
        assert main([*args, "--host", "0.0.0.0", "--api-key", "k"]) == 0
    assert any("--allowed-hosts" in r.getMessage() for r in caplog.records)  # LAN clients would get 421


# --------------------------------------------------------------------------------------------------
# finding 5: DNS rebinding (Host) and bodies of any Content-Type


def test_host_allowlist_rules():
    hosts = AllowedHosts("127.0.0.1", 8000)
    for ok in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST:8000", "[::1]:8000", "127.0.0.1", "localhost"):
        assert hosts.allows(ok), ok
    for bad in ("evil.example:8000", "127.0.0.1:9000", "127.0.0.1.evil.example:8000", "", "localhost:8000:1",
                "[::1", "localhost:x", "evil.example"):  # fmt: skip
        assert not hosts.allows(bad), bad
    more = AllowedHosts("0.0.0.0", 8000, ["search.example.org,10.1.2.3:8080", "::2"], "https://pub.example.net/x")
    for ok in ("search.example.org", "search.example.org:443", "10.1.2.3:8080", "[::2]:1", "pub.example.net",
               "0.0.0.0:8000"):  # fmt: skip
        assert more.allows(ok), ok
    assert not more.allows("10.1.2.3:8000") and not more.allows("evil.example")
    assert AllowedHosts("::1", 8000).allows("[::1]:8000")
    assert AllowedHosts(extra=["*"]).allows("evil.example:1")
    with pytest.raises(ValueError, match="--allowed-hosts"):
        AllowedHosts(extra=["a:b:c:x"])


def test_the_gate_refuses_before_anything_is_read():
    """A wrong Host: 421 before the route runs or the body is read; a POST body not declared JSON:
    415, except text/plain or none on clip-retrieval's two routes."""
    calls = []

    async def route(scope, receive, send):
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        raise AssertionError("the body was read")

    def status(path: str, host: str = "127.0.0.1:8000", kind: str | None = None, method: str = "POST") -> int:
        headers = [(b"host", host.encode())] + ([(b"content-type", kind.encode())] if kind is not None else [])
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "headers": headers}
        asyncio.run(RequestGate(route, AllowedHosts("127.0.0.1", 8000))(scope, receive, send))
        return sent[0]["status"]

    assert status("/v1/search", "evil.example:8000", "application/json") == 421
    assert status("/health", "evil.example:8000", method="GET") == 421
    assert status("/v1/search", kind="text/plain;charset=UTF-8") == 415
    assert status("/v1/embeddings", kind="application/x-www-form-urlencoded") == 415  # curl -d's default
    assert status("/v1/search") == 415 and status("/v1/search", kind="multipart/form-data; boundary=x") == 415
    assert status("/knn-service", kind="application/x-www-form-urlencoded") == 415
    assert not calls
    assert status("/v1/search", kind="application/json; charset=utf-8") == 200
    assert status("/knn-service", kind="text/plain;charset=UTF-8") == 200  # clip-front
    assert status("/metadata") == 200  # ClipClient sends no Content-Type
    assert status("/health", method="GET") == 200
    assert calls == ["/v1/search", "/knn-service", "/metadata", "/health"]


def test_a_rebound_host_and_a_non_json_body_are_refused_by_the_server(world):
    """Before: any Host was answered (a page whose name was rebound to 127.0.0.1 read /v1/search) and
    a text/plain or form body was parsed as JSON."""
    r = httpx.post(world["url"] + "/v1/search", content=b"{not json", headers={"Host": "evil.example"} | JSON)
    assert r.status_code == 421 and "--allowed-hosts" in r.json()["error"]["message"], r.text  # not parsed: no 400
    body = '{"text": "a cat", "k": 2}'
    for kind in ("text/plain;charset=UTF-8", "application/x-www-form-urlencoded"):
        r = httpx.post(world["url"] + "/v1/search", content=body, headers={"Content-Type": kind}, timeout=30)
        assert r.status_code == 415 and "application/json" in r.json()["error"]["message"], r.text
    assert search(world).status_code == 200
    knn = '{"text": "a cat", "indice_name": "photos", "num_images": 2}'
    assert httpx.post(world["url"] + "/knn-service", content=knn, timeout=30).status_code == 200
    r = httpx.post(world["url"] + "/knn-service", content=knn, headers={"Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 200 and len(r.json()) == 2
    assert httpx.get(f"http://localhost:{world['port']}/health", timeout=30).status_code == 200


# --------------------------------------------------------------------------------------------------
# finding 7: metrics


def test_invented_methods_do_not_add_metric_series(world):
    """Before: each of XMETHOD1, XMETHOD2, ... added a series to siglip_requests_total, without a key."""

    with httpx.Client(base_url=world["url"], timeout=30) as client:

        def series() -> list[str]:
            return [
                line for line in client.get("/metrics").text.splitlines() if line.startswith("siglip_requests_total{")
            ]

        for i in range(10):
            client.request(f"XMETHOD{i}", f"/v1/search/{i}")
        first = series()
        for i in range(10, 30):
            client.request(f"XMETHOD{i}", f"/nothing/{i}")
        assert not any("XMETHOD" in line for line in series()) and 'method="other"' in "".join(first)
        assert len(series()) <= len(first) + 1  # at most /metrics' own series is new
        client.get("/health", headers={"Host": "evil.example"})
        assert any('status="421"' in line for line in series())  # refusals at the gate are counted too
    m = Metrics()
    m.request("other", "X" * 10_000, 999, 0.1)
    assert list(m.requests) == [("other", "other", "other")]


# --------------------------------------------------------------------------------------------------
# finding 9c: image formats


def encoded(fmt: str, size=(20, 14)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(out, format=fmt)
    return out.getvalue()


def test_uploads_decode_only_the_common_formats():
    """JPEG, PNG, WebP, GIF and BMP decode; TIFF, PCX, PPM, SGI, ICO and EPS-like data get 415 naming
    the format, and unknown bytes 400. Before: every format PIL knows was decoded from a request."""
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP"):
        assert open_image(encoded(fmt), "image", 10**6).size == (20, 14)
    for fmt, name in [("TIFF", "TIFF"), ("PCX", "PCX"), ("PPM", "PPM"), ("SGI", "SGI"), ("ICO", "ICO")]:
        with pytest.raises(ApiError) as e:
            open_image(encoded(fmt, (16, 16)), "images[3]", 10**6)
        assert e.value.status == 415 and e.value.message.startswith(f"images[3]: a {name} image"), e.value.message
    with pytest.raises(ApiError) as e:
        open_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "image", 10**6)
    assert e.value.status == 415 and "EPS" in e.value.message
    with pytest.raises(ApiError) as e:
        open_image(b"\x00garbage" * 10, "image", 10**6)
    assert e.value.status == 400 and "JPEG, PNG, WEBP, GIF, BMP" in e.value.message


def test_a_tiff_upload_gets_415_but_siglip_embed_still_reads_tiffs(world, tmp_path):
    """The allowlist is for request input only: the user's own TIFFs still go into an index."""
    tiff = base64.b64encode(encoded("TIFF")).decode()
    r = httpx.post(world["url"] + "/v1/search", json={"image": tiff, "k": 1}, timeout=30)
    assert r.status_code == 415 and "image: a TIFF image" in r.json()["error"]["message"], r.text
    png = base64.b64encode(encoded("PNG")).decode()
    assert httpx.post(world["url"] + "/v1/search", json={"image": png, "k": 1}, timeout=30).status_code == 200
    (tmp_path / "mine").mkdir()
    Image.new("RGB", (20, 14), (1, 2, 3)).save(tmp_path / "mine" / "scan.tif")
    code = main(["embed", str(tmp_path / "mine"), "--model", str(world["model"]), "--out",
                 str(tmp_path / "mine.index"), "--workers", "0"])  # fmt: skip
    assert code == 0 and read_meta(tmp_path / "mine.index")["count"] == 1
