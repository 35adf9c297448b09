"""`siglip serve` answered by real clients: the official `openai` client, clip-retrieval's `ClipClient`
(loaded by file path: the package's __init__ imports its Flask back end) and httpx. One server per
module (a tiny model, an image index and a text index built by `siglip embed`); every answer is
checked against the Model API and a brute-force search over the index's rows."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import signal
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import siglip
from siglip.index import read_items, read_meta
from tests.serve_helpers import Server, build_world

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("serve")
    w = build_world(root, tokenizer)
    args = ["--model", str(w["model"]), "--index", f"photos={w['photos']}", "--index", f"texts={w['texts']}"]
    server = Server([*args, "--max-wait-ms", "30", "--cors", "http://front.test"], root / "server.log")
    w |= {"server": server, "url": server.url, "model_api": siglip.load(w["model"])}
    yield w
    code = server.stop()
    assert "Traceback" not in (root / "server.log").read_text(), server.output()
    assert code in (0, -signal.SIGTERM), f"exit status {code}:\n{server.output()}"  # uvicorn re-raises SIGTERM


def b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def brute_force(index: Path, q: torch.Tensor, k: int) -> tuple[list[int], list[float], list[dict]]:
    """Rows, cosines and items of the k best rows by a full float32 product and a sort."""
    meta = read_meta(index)
    rows = torch.from_numpy(np.load(index / meta["embeddings"]).astype(np.float32))
    cos = (rows @ q.reshape(-1)).double()
    order = torch.argsort(cos, descending=True)[:k].tolist()
    return order, [float(cos[r]) for r in order], read_items(index, meta, order)


def post(world, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(world["url"] + path, json=body, timeout=60, **kw)


# --------------------------------------------------------------------------------------------------
# the OpenAI embeddings API, through the official client


def test_openai_client_embeds_texts_and_images_as_the_model_does(world):
    model = world["model_api"]
    client = openai.OpenAI(base_url=world["url"] + "/v1", api_key="not-needed")
    texts = ["a photo of a cat", "two green triangles", "a red square on white"]
    data_url = "data:image/png;base64," + b64(world["images"][0])
    out = client.embeddings.create(model="siglip-tiny", input=[texts[0], data_url, *texts[1:]])  # base64 by default
    got = torch.tensor([d.embedding for d in out.data])
    want = torch.cat(
        [model.embed_texts(texts[:1]), model.embed_images(world["images"][:1]), model.embed_texts(texts[1:])]
    )
    torch.testing.assert_close(got, want, atol=1e-3, rtol=0)
    assert [d.index for d in out.data] == [0, 1, 2, 3] and out.model == "siglip-tiny"
    tok = model.tokenizer
    text_tokens = sum(min(len(tok.encode(t)), tok.length) for t in texts)
    assert out.usage.prompt_tokens == out.usage.total_tokens == text_tokens + (16 // model.config.patch_size) ** 2

    assert [m.id for m in client.models.list()] == ["m.pt"]
    floats = client.embeddings.create(model="m", input="a dog running on grass", encoding_format="float")
    torch.testing.assert_close(
        torch.tensor(floats.data[0].embedding), model.embed_texts(["a dog running on grass"])[0], atol=1e-3, rtol=0
    )


def test_openai_client_gets_a_clear_error(world):
    client = openai.OpenAI(base_url=world["url"] + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="encoding_format"):
        client.embeddings.create(model="m", input="a cat", encoding_format="hex")  # type: ignore[arg-type]


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(world):
    """16 requests at once with --max-wait-ms 30: the model sees batches of several requests (from
    /metrics), and every request's rows equal the model's own embedding of its texts."""
    from tests.conftest import CAPTIONS

    model, results = world["model_api"], {}
    batches_before = _metric(world, 'siglip_batch_requests_count{kind="text"}')

    def one(i):
        texts = [CAPTIONS[i % 6], CAPTIONS[(i + 1) % 6]][: 1 + i % 2]
        r = post(world, "/v1/embeddings", {"model": "m", "input": texts})
        results[i] = (texts, r)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for texts, r in results.values():
        assert r.status_code == 200, r.text
        got = torch.tensor([d["embedding"] for d in r.json()["data"]])
        torch.testing.assert_close(got, model.embed_texts(texts), atol=1e-3, rtol=0)
    calls = _metric(world, 'siglip_batch_requests_count{kind="text"}') - batches_before
    assert calls < 16, f"16 requests took {calls} model calls: not batched"


def _metric(world, name: str) -> float:
    text = httpx.get(world["url"] + "/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


# --------------------------------------------------------------------------------------------------
# our own routes


def test_search_equals_brute_force_with_the_papers_probability(world):
    model = world["model_api"]
    q = model.embed_texts(["a red square on white"])
    r = post(world, "/v1/search", {"index": "photos", "text": "a red square on white", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    rows, cos, items = brute_force(world["photos"], q, 5)
    assert body["index"] == "photos" and body["k"] == 5
    assert [h["row"] for h in body["hits"]] == rows
    assert [h["path"] for h in body["hits"]] == [it["path"] for it in items]
    for h, c in zip(body["hits"], cos):
        logit = float(model.model.t_prime.detach().exp() * c + model.model.b.detach())  # t * cos + b
        assert h["cosine"] == pytest.approx(c, abs=1e-5) and h["logit"] == pytest.approx(logit, abs=1e-4)
        assert h["score"] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-6)
        assert h["thumbnail"].startswith(f"{world['url']}/items/photos/{h['row']}/thumbnail?g=")

    image = post(world, "/v1/search", {"index": "photos", "image": b64(world["images"][2]), "k": 1}).json()
    assert image["hits"][0]["path"] == str(world["images"][2]) and image["hits"][0]["cosine"] == pytest.approx(
        1, abs=1e-4
    )
    vec = model.embed_texts(["two green triangles"])[0] * 3  # any length: normalised by the server
    by_vec = post(world, "/v1/search", {"index": "texts", "vector": vec.tolist(), "k": 2}).json()
    assert [h["text"] for h in by_vec["hits"]][0] == "two green triangles" and "thumbnail" not in by_vec["hits"][0]


def test_classify_and_score_equal_the_model_api(world):
    model, images = world["model_api"], world["images"][:3]
    labels, templates = ["a red square", "a green thing", "a blue circle"], ["{}", "a photo of {}."]
    r = post(world, "/v1/classify", {"images": [b64(p) for p in images], "labels": labels, "templates": templates})
    assert r.status_code == 200, r.text
    want = model.classify(images, labels, templates)
    got = torch.tensor([res["probabilities"] for res in r.json()["results"]])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert [res["top"] for res in r.json()["results"]] == [labels[i] for i in want.argmax(1).tolist()]

    texts = ["a red square on white", "a photo of a cat", "two green triangles"]
    body = {"images": ["data:image/png;base64," + b64(p) for p in images], "texts": texts}
    full = post(world, "/v1/score", body).json()
    torch.testing.assert_close(torch.tensor(full["probabilities"]), model.score(images, texts), atol=1e-5, rtol=0)
    pairs = post(world, "/v1/score", body | {"pairs": True}).json()
    torch.testing.assert_close(
        torch.tensor(pairs["probabilities"]), model.score(images, texts, pairs=True), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(torch.sigmoid(torch.tensor(pairs["logits"])), torch.tensor(pairs["probabilities"]))


def test_thumbnails_serve_items_of_the_index_only(world):
    hits = post(world, "/v1/search", {"index": "photos", "text": "a cat", "k": 7}).json()["hits"]
    big = next(h for h in hits if h["path"].endswith("big.png"))
    r = httpx.get(big["thumbnail"], timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (256, 171)  # 600 x 400, longer side 256
    small = Image.open(io.BytesIO(httpx.get(hits[0]["thumbnail"], timeout=30).content))
    assert max(small.size) <= 256 and small.format == "JPEG"
    for bad in ("/items/photos/7/thumbnail", "/items/photos/-1/thumbnail", "/items/nope/0/thumbnail",
                "/items/texts/0/thumbnail", "/items/photos/..%2F..%2Fetc%2Fpasswd/thumbnail",
                "/items/%2Fetc%2Fpasswd/0/thumbnail", "/items/photos/%C2%B2/thumbnail",
                "/items/photos/" + "9" * 5000 + "/thumbnail", "/items/photos/1.0/thumbnail"):  # fmt: skip
        r = httpx.get(world["url"] + bad, timeout=30)
        assert r.status_code == 404 and "error" in r.json(), (bad, r.text)


def test_page_static_health_metrics_and_cors(world):
    assert httpx.get(world["url"] + "/v2/none", timeout=30).status_code == 404  # counted as route "other"
    page = httpx.get(world["url"] + "/", timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()
    for escape in ("/static/..%2Fapp.py", "/static/%2e%2e/app.py", "/static/..%2F..%2Fapi.py", "/static/../app.py"):
        r = httpx.get(world["url"] + escape, timeout=30)
        assert r.status_code == 404 and "create_app" not in r.text, escape
    health = httpx.get(world["url"] + "/health", timeout=30).json()
    assert health["status"] == "ok" and health["indexes"]["photos"] == {
        "kind": "image",
        "count": 7,
        "approximate": None,
    }
    metrics = httpx.get(world["url"] + "/metrics", timeout=30)
    assert metrics.headers["content-type"].startswith("text/plain")
    from prometheus_client.parser import text_string_to_metric_families  # Prometheus' own reader

    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    assert families["siglip_request_seconds"].type == "histogram"
    assert families["siglip_batch_size"].type == "histogram" and families["siglip_queue_depth"].type == "gauge"
    answered = {(s.labels["route"], s.labels["status"]): s.value for s in families["siglip_requests"].samples}
    assert answered[("/health", "200")] >= 1 and ("/v2/none", "404") not in answered
    rows = {s.labels["index"]: s.value for s in families["siglip_index_rows"].samples}
    assert rows == {"photos": 7, "texts": 6}
    pre = httpx.options(
        world["url"] + "/v1/search",
        headers={"Origin": "http://front.test", "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    assert pre.headers.get("access-control-allow-origin") == "http://front.test"
    other = httpx.get(world["url"] + "/indices-list", headers={"Origin": "http://evil.test"}, timeout=30)
    assert "access-control-allow-origin" not in other.headers


# --------------------------------------------------------------------------------------------------
# clip-retrieval's back-end API, through its own client


def clip_client_module():
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None:
        pytest.fail("clip-retrieval is not installed: pip install --no-deps clip-retrieval (the test extra's rule)")
    path = Path(spec.submodule_search_locations[0]) / "clip_client.py"
    module_spec = importlib.util.spec_from_file_location("clip_client_by_path", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_clip_retrieval_client_gets_our_results(world):
    cc = clip_client_module()
    model = world["model_api"]
    client = cc.ClipClient(url=world["url"] + "/knn-service", indice_name="photos", num_images=4)
    hits = client.query(text="a blue circle in the dark")
    rows, cos, items = brute_force(world["photos"], model.embed_texts(["a blue circle in the dark"]), 4)
    assert [h["id"] for h in hits] == rows
    assert [h["similarity"] for h in hits] == pytest.approx(cos, abs=1e-5)
    assert all(h["url"].startswith(f"{world['url']}/items/photos/{h['id']}/thumbnail?g=") for h in hits)
    assert httpx.get(hits[0]["url"], timeout=30).headers["content-type"] == "image/jpeg"

    by_image = client.query(image=str(world["images"][4]))  # a file path: the client sends base64
    assert by_image[0]["id"] == rows_of(world)[str(world["images"][4])]
    by_vec = client.query(embedding_input=model.embed_images(world["images"][1:2])[0].tolist())
    assert by_vec[0]["id"] == rows_of(world)[str(world["images"][1])]
    texts = cc.ClipClient(url=world["url"] + "/knn-service", indice_name="texts", modality=cc.Modality.TEXT)
    assert texts.query(text="two green triangles")[0]["caption"] == "two green triangles"


def rows_of(world) -> dict[str, int]:
    meta = read_meta(world["photos"])
    return {it["path"]: r for r, it in enumerate(read_items(world["photos"], meta, list(range(meta["count"]))))}


def test_clip_front_requests_text_plain_bodies_and_metadata(world):
    """clip-front posts JSON as text/plain, asks for num_result_ids ids and num_images with metadata,
    then /metadata for more as the page scrolls."""
    body = {"text": "a photo of a cat", "image": None, "image_url": None, "embedding_input": None,
            "modality": "image", "num_images": 2, "indice_name": "photos", "num_result_ids": 5,
            "use_mclip": False, "deduplicate": True, "use_safety_model": True, "use_violence_detector": True,
            "aesthetic_score": "", "aesthetic_weight": "0.5"}  # fmt: skip
    headers = {"content-type": "text/plain;charset=UTF-8"}
    r = httpx.post(world["url"] + "/knn-service", content=json.dumps(body), headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    hits = r.json()
    assert (
        len(hits) == 5 and all("url" in h for h in hits[:2]) and all(set(h) == {"id", "similarity"} for h in hits[2:])
    )
    ids = [h["id"] for h in hits[2:]]
    meta = httpx.post(
        world["url"] + "/metadata", content=json.dumps({"ids": ids, "indice_name": "photos"}), headers=headers
    ).json()
    assert [m["id"] for m in meta] == ids
    assert [m["metadata"]["url"].split("?")[0] for m in meta] == [
        f"{world['url']}/items/photos/{i}/thumbnail" for i in ids
    ]
    assert httpx.get(world["url"] + "/indices-list", timeout=30).json() == ["photos", "texts"]
