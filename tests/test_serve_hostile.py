"""`siglip serve` under hostile input, with --api-key: every bad request gets a 4xx naming the field
(never a 500, never a dead server: /health answers after each), a 30,000 x 30,000 PNG is refused
from its header, a 50 MB body gets 413, 200 concurrent requests get 200 or 503 + Retry-After, and
the server's memory stays bounded. Also: the key on every API route, signed thumbnail URLs, SIGTERM
draining a request in flight, and the command's refusals at start."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
import socket
import struct
import sys
import time
import zlib

import httpx
import pytest
import torch

import siglip
from siglip.cli import main
from tests.serve_helpers import Server, build_world

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("hostile")
    w = build_world(root, tokenizer)
    args = ["--model", str(w["model"]), "--index", f"photos={w['photos']}", "--index", f"texts={w['texts']}"]
    server = Server([*args, "--api-key", KEY, "--max-queue", "16", "--max-concurrent", "64"], root / "server.log")
    w |= {"server": server, "url": server.url, "root": root, "rss_start": server.rss_mb()}
    yield w
    server.stop()
    log = (root / "server.log").read_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 200 :][:3000]  # no request ever raised


def b64(path) -> str:
    return base64.b64encode(open(path, "rb").read()).decode()


def png_bomb(side: int = 30_000) -> bytes:
    """A valid 1-bit PNG of side x side black pixels (~110 kB; decoded, 900 MB in PIL's 'L'/'1' storage),
    compressed row by row so the test never holds the raw image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row, parts = zlib.compressobj(9), b"\x00" * (1 + (side + 7) // 8), []
    for _ in range(side):
        parts.append(z.compress(row))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------------
# the key


def test_every_api_route_needs_the_key_but_the_page_and_health_do_not(world):
    url = world["url"]
    for method, path in [("POST", "/v1/search"), ("POST", "/v1/embeddings"), ("POST", "/v1/classify"),
                         ("POST", "/v1/score"), ("GET", "/indices-list"), ("POST", "/knn-service"),
                         ("POST", "/metadata"), ("GET", "/metrics"), ("GET", "/items/photos/0/thumbnail"),
                         ("GET", "/v1/models")]:  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            r = httpx.request(method, url + path, headers=headers, json={"text": "a cat"}, timeout=30)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert (
                r.json()["error"]["type"] == "authentication_error" and "Authorization" in r.json()["error"]["message"]
            )
    assert httpx.get(url + "/indices-list", headers=AUTH, timeout=30).json() == ["photos", "texts"]
    for path in ("/", "/health"):
        assert httpx.get(url + path, timeout=30).status_code == 200
    assert httpx.get(url + "/health", timeout=30).json() == {"status": "ok"}  # no index names without the key
    assert httpx.get(url + "/health", headers=AUTH, timeout=30).json()["indexes"]["photos"]["count"] == 7


def test_no_cors_without_the_flag(world):
    origin = {"Origin": "http://elsewhere.test"}
    r = httpx.get(world["url"] + "/indices-list", headers=AUTH | origin, timeout=30)
    assert r.status_code == 200 and not any(h.startswith("access-control-") for h in r.headers)
    pre = httpx.options(world["url"] + "/v1/search", headers=origin | {"Access-Control-Request-Method": "POST"})
    assert pre.status_code in (401, 405) and not any(h.startswith("access-control-") for h in pre.headers)


def test_thumbnail_urls_are_signed_so_an_img_needs_no_header(world):
    body = {"index": "photos", "text": "a cat", "k": 2}
    hits = httpx.post(world["url"] + "/v1/search", json=body, headers=AUTH, timeout=30).json()["hits"]
    signed = hits[0]["thumbnail"]
    assert "?sig=" in signed
    assert httpx.get(signed, timeout=30).headers["content-type"] == "image/jpeg"  # no header
    other_row = signed.replace(f"/{hits[0]['row']}/thumbnail", f"/{hits[1]['row']}/thumbnail")
    assert httpx.get(other_row, timeout=30).status_code == 403  # a signature is for its own row only
    assert httpx.get(signed.split("?")[0], timeout=30).status_code == 401
    assert httpx.get(signed.split("?")[0], headers=AUTH, timeout=30).status_code == 200
    knn = {"text": "a cat", "indice_name": "photos", "num_images": 1}
    url = httpx.post(world["url"] + "/knn-service", json=knn, headers=AUTH, timeout=30).json()[0]["url"]
    assert "?sig=" in url and httpx.get(url, timeout=30).status_code == 200


# --------------------------------------------------------------------------------------------------
# bad requests: 4xx naming the field, and the server lives on


BAD = [  # (path, body or raw bytes, status, words the message must contain)
    ("/v1/search", b"{not json", 400, "malformed JSON"),
    ("/v1/search", b"", 400, "empty"),
    ("/v1/search", b"[" * 100_000, 400, "malformed JSON (RecursionError"),
    ("/v1/search", b'{"k": 1' + b"0" * 5000 + b"}", 400, "malformed JSON"),
    ("/v1/search", b'{"index": "photos", "text": "\xff"}', 400, "malformed JSON (UnicodeDecodeError"),
    ("/v1/search", b"\xff\xfe{}", 400, "malformed JSON"),
    ("/v1/search", b"[1, 2]", 400, "JSON object"),
    ("/v1/search", {"index": "photos", "text": "a cat", "k": "ten"}, 400, "k:"),
    ("/v1/search", {"index": "photos", "text": "a cat", "k": 0}, 400, "k: 0 is out of range"),
    ("/v1/search", {"index": "photos", "text": "a cat", "k": 10**12}, 400, "k:"),
    ("/v1/search", {"index": "nope", "text": "a cat"}, 404, "index: no index 'nope'"),
    ("/v1/search", {"text": "a cat"}, 400, "index: required"),
    ("/v1/search", {"index": ["photos"], "text": "a cat"}, 400, "index:"),
    ("/v1/search", {"index": "photos", "text": 123}, 400, "text: expected a string"),
    ("/v1/search", {"index": "photos"}, 400, "exactly one of text, image, vector"),
    ("/v1/search", {"index": "photos", "text": "a", "image": "AAAA"}, 400, "exactly one"),
    ("/v1/search", {"index": "photos", "vector": [0.1] * 3}, 400, "vector: 3 numbers"),
    ("/v1/search", {"index": "photos", "vector": [0.0] * 64}, 400, "vector: the zero vector"),
    ("/v1/search", {"index": "photos", "vector": ["a"] * 64}, 400, "vector[0]"),
    ("/v1/search", {"index": "photos", "image": "%%% not base64 %%%"}, 400, "image:"),
    (
        "/v1/search",
        {"index": "photos", "image": base64.b64encode(b"GIF89a but not").decode()},
        400,
        "image: not an image",
    ),
    ("/v1/search", {"index": "photos", "image": "data:text/plain,hello"}, 400, "image: a data: URL must be base64"),
    ("/v1/classify", {"images": [], "labels": ["a"]}, 400, "images: empty"),
    ("/v1/classify", {"images": ["AAAA"]}, 400, "labels:"),
    ("/v1/classify", {"images": ["AAAA"], "labels": ["a"], "templates": ["no slot"]}, 400, "templates[0]"),
    ("/v1/classify", {"images": "AAAA", "labels": ["a"]}, 400, "images: expected an array"),
    ("/v1/classify", {"images": ["AAAA"] * 300, "labels": ["a"]}, 400, "images: 300 images, over the limit of 256"),
    ("/v1/score", {"images": ["AAAA"], "texts": ["a", "b"], "pairs": True}, 400, "texts: pairs=true"),
    ("/v1/score", {"images": ["AAAA"], "texts": ["a"], "pairs": "yes"}, 400, "pairs:"),
    ("/v1/score", {"images": [None], "texts": ["a"]}, 400, "images[0]"),
    ("/v1/embeddings", {"model": "m"}, 400, "input:"),
    ("/v1/embeddings", {"model": "m", "input": []}, 400, "input: empty"),
    ("/v1/embeddings", {"model": "m", "input": [1, 2, 3]}, 400, "input: token-id arrays"),
    ("/v1/embeddings", {"model": "m", "input": ["a", ""]}, 400, "input[1]: empty"),
    ("/v1/embeddings", {"model": "m", "input": "a", "encoding_format": "hex"}, 400, "encoding_format"),
    ("/v1/embeddings", {"model": "m", "input": "a", "dimensions": 3}, 400, "dimensions"),
    ("/v1/embeddings", {"model": "m", "input": ["a"] * 5000}, 400, "input: 5000 items"),
    ("/v1/embeddings", {"model": "m", "input": ["a", "b" * 100_000]}, 400, "input[1]: 100000 characters"),
    ("/v1/search", {"index": "photos", "text": "b" * 100_000}, 400, "text: 100000 characters"),
    ("/v1/embeddings", {"model": "m", "input": "data:image/png;base64,AAAA"}, 400, "input[0]"),
    ("/knn-service", {"image_url": "http://169.254.169.254/", "indice_name": "photos"}, 400, "image_url"),
    ("/knn-service", {"text": "a", "indice_name": "photos", "modality": "audio"}, 400, "modality"),
    ("/knn-service", {"text": "a", "indice_name": "photos", "num_images": -1}, 400, "num_images"),
    ("/knn-service", {"text": "a", "indice_name": "laion5B"}, 404, "indice_name: no index"),
    ("/metadata", {"ids": "1", "indice_name": "photos"}, 400, "ids:"),
    ("/metadata", {"ids": [0, 99], "indice_name": "photos"}, 400, "ids[1]"),
]


@pytest.mark.parametrize("path,body,status,words", BAD, ids=[f"{p}-{w}" for p, _, _, w in BAD])
def test_bad_request_gets_a_4xx_naming_the_field(world, path, body, status, words):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(world["url"] + path, content=content, headers=AUTH, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"] and error["type"], error
    assert world["server"].healthy()


def test_unknown_routes_and_methods_answer_in_the_error_shape(world):
    r = httpx.get(world["url"] + "/v2/nothing", headers=AUTH, timeout=30)
    assert r.status_code == 404 and "/v2/nothing" in r.json()["error"]["message"]
    r = httpx.get(world["url"] + "/v1/search", headers=AUTH, timeout=30)
    assert r.status_code == 405 and r.json()["error"]["message"]


def test_a_30000_pixel_square_png_is_refused_from_its_header(world):
    bomb = png_bomb()
    assert len(bomb) < 200_000 and struct.unpack(">II", bomb[16:24]) == (30_000, 30_000)  # IHDR width, height
    data = base64.b64encode(bomb).decode()
    cases = [("/v1/search", {"index": "photos", "image": data}, "image: 900000000 pixels"),
             ("/v1/embeddings", {"model": "m", "input": ["a cat", "data:image/png;base64," + data]}, "input[1]: 9"),
             ("/v1/classify", {"images": [b64(world["images"][0]), data], "labels": ["a"]}, "images[1]: 9"),
             ("/knn-service", {"image": data, "indice_name": "photos"}, "image: 900000000"),
             # under PIL's own bomb check (179 M pixels), over ours (--max-pixels 40 M): refused by ours
             ("/v1/search", {"index": "photos", "image": base64.b64encode(png_bomb(8000)).decode()},
              "image: 8000 x 8000 = 64000000 pixels")]  # fmt: skip
    for path, body, words in cases:
        start = time.perf_counter()
        r = httpx.post(world["url"] + path, json=body, headers=AUTH, timeout=60)
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
        assert "--max-pixels" in r.json()["error"]["message"]
        assert time.perf_counter() - start < 10  # decoding 900 M pixels would take far longer on 2 cores
        assert world["server"].healthy()
    assert world["server"].rss_mb() < world["rss_start"] + 300  # the pixels were never decoded


def test_a_50_mb_body_gets_413_declared_or_chunked(world):
    big = b'{"input": "' + b"a" * (50 * 1024 * 1024) + b'"}'
    r = httpx.post(world["url"] + "/v1/embeddings", content=big, headers=AUTH, timeout=60)
    assert r.status_code == 413 and "--max-body" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "request_too_large"

    def chunks():  # no Content-Length: counted while it streams
        for _ in range(50):
            yield b"a" * (1024 * 1024)

    try:
        r = httpx.post(world["url"] + "/v1/embeddings", content=chunks(), headers=AUTH, timeout=60)
        assert r.status_code == 413, r.text
    except httpx.TransportError:  # the server may close the connection while the client still sends
        pass
    assert world["server"].healthy()
    assert world["server"].rss_mb() < world["rss_start"] + 300


def test_a_client_gone_mid_body_is_not_a_server_error(world):
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", world["server"].port), timeout=30) as sock:
            sock.sendall(f"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"text\": ".encode())  # fmt: skip
    time.sleep(0.5)
    metrics = httpx.get(world["url"] + "/metrics", headers=AUTH, timeout=30).text
    assert 'status="500"' not in metrics and world["server"].healthy()


def test_200_concurrent_requests_get_answers_or_503_and_memory_stays_bounded(world):
    image = "data:image/png;base64," + b64(world["images"][1])

    async def burst():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=120, headers=AUTH) as client:
            jobs = [client.post(world["url"] + "/v1/embeddings", json={"model": "m", "input": ["a cat", "two dogs"] if i % 2 else [image]})
                    for i in range(200)]  # fmt: skip
            return await asyncio.gather(*jobs, return_exceptions=True)

    answers = asyncio.run(burst())
    errors = [a for a in answers if isinstance(a, Exception)]
    assert not errors, errors[:3]
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 503}, sorted(set(codes))
    assert codes.count(200) > 0
    for a in answers:
        if a.status_code == 503:
            assert a.headers["retry-after"] == "1" and a.json()["error"]["type"] == "overloaded_error"
    assert world["server"].healthy()
    assert world["server"].rss_mb() < world["rss_start"] + 300, (world["rss_start"], world["server"].rss_mb())


VALID = {  # one good body per POST route; every field of it is then swapped for each odd value
    "/v1/search": {"index": "photos", "text": "a cat", "k": 3},
    "/v1/classify": {"images": ["IMAGE"], "labels": ["a cat", "a dog"], "templates": ["a {}"]},
    "/v1/score": {"images": ["IMAGE"], "texts": ["a cat"], "pairs": True},
    "/v1/embeddings": {"model": "m", "input": ["a cat"], "encoding_format": "float"},
    "/knn-service": {"text": "a cat", "indice_name": "photos", "modality": "image", "num_images": 2},
    "/metadata": {"ids": [0, 1], "indice_name": "photos"},
}
ODD = [None, 0, -1, 2**70, 1.5, float("nan"), True, "", "x", [], [None], [1.5], ["x"] * 3, {}, {"a": 1}]


def test_every_field_swapped_for_odd_values_never_gives_a_5xx(world):
    image = b64(world["images"][0])
    with httpx.Client(base_url=world["url"], headers=AUTH, timeout=60) as client:
        for path, good in VALID.items():
            good = json.loads(json.dumps(good).replace('"IMAGE"', json.dumps(image)))
            assert client.post(path, json=good).status_code == 200, path
            for key in good:
                for odd in ODD:
                    r = client.post(path, content=json.dumps({**good, key: odd}))
                    assert r.status_code < 500 and (r.status_code == 200 or key in r.json()["error"]["message"]), (
                        path, key, odd, r.status_code, r.text[:300])  # fmt: skip
    assert world["server"].healthy()


# --------------------------------------------------------------------------------------------------
# SIGTERM drains; the command's refusals at start


def test_an_index_of_other_weights_is_refused_at_start(world, tokenizer, tmp_path, capsys):
    torch.manual_seed(1)
    from siglip.config import ModelConfig
    from siglip.model import SigLIP

    net = SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size))
    siglip.save_model(tmp_path / "other.pt", net, tokenizer, "bicubic")
    code = main(["serve", "--model", str(tmp_path / "other.pt"), "--index", f"photos={world['photos']}"])
    err = capsys.readouterr().err
    assert code == 1 and f"--index photos={world['photos']}" in err and "fingerprint" in err


def test_binding_beyond_loopback_without_a_key_warns(world, monkeypatch, caplog):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    with caplog.at_level(logging.WARNING, logger="siglip.serve"):
        assert main(["serve", "--model", str(world["model"]), "--host", "0.0.0.0"]) == 0
        assert main(["serve", "--model", str(world["model"]), "--host", "0.0.0.0", "--api-key", "k"]) == 0
        assert main(["serve", "--model", str(world["model"])]) == 0
        monkeypatch.setenv("SIGLIP_API_KEY", "from-the-environment")
        assert main(["serve", "--model", str(world["model"]), "--host", "0.0.0.0"]) == 0
    warnings = [r.getMessage() for r in caplog.records if "without --api-key" in r.getMessage()]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0]
    assert [c["host"] for c in calls] == ["0.0.0.0", "0.0.0.0", "127.0.0.1", "0.0.0.0"]


def test_without_fastapi_the_error_names_the_extra(world, monkeypatch, capsys):
    for name in [m for m in sys.modules if m.startswith("siglip.serve")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ImportError
    assert main(["serve", "--model", str(world["model"])]) == 1
    assert "pip install 'siglip[serve]'" in capsys.readouterr().err


def test_sigterm_finishes_the_request_in_flight_then_exits(world):
    """Last of the module: SIGTERM arrives while a request's body is still coming; the server stops
    listening, reads the rest, embeds it through the batching queue, answers 200, then exits."""
    server, body = world["server"], json.dumps({"input": ["a cat"]}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
    sock.sendall(head.encode() + body[:5])
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    with pytest.raises(httpx.TransportError):  # no new connections while it drains
        httpx.get(server.url + "/health", timeout=5)
    sock.sendall(body[5:])
    answer = b""
    while chunk := sock.recv(65536):  # the server closes the connection after answering
        answer += chunk
    status, _, payload = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200"), answer[:300]
    want = siglip.load(world["model"]).embed_texts(["a cat"])[0]
    torch.testing.assert_close(torch.tensor(json.loads(payload)["data"][0]["embedding"]), want, atol=1e-3, rtol=0)
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
