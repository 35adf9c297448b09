"""The work a request starts inside `siglip serve` stays inside its limits (issue 31, findings 1, 3, 6,
8 and 9e): a failed image request leaves no decode job behind, one bad text fails only its own request,
classify prompts go through the queue, searches are bounded (--max-k, --max-candidates, exact scans),
vectors are checked in float32, and a lone client never waits for a batch. In-process and fast: a
tiny model or a stand-in, the app through Starlette's TestClient."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

import siglip
from siglip.config import ModelConfig
from siglip.model import SigLIP

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from siglip.serve import batching  # noqa: E402
from siglip.serve.app import create_app  # noqa: E402
from siglip.serve.batching import Batcher  # noqa: E402
from siglip.serve.limits import ApiError  # noqa: E402
from siglip.serve.state import ServerState, Settings  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    net = SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size))
    path = tmp_path_factory.mktemp("work") / "m.pt"
    siglip.save_model(path, net, tokenizer, "bicubic")
    return siglip.load(path)


class SlowDecodes:
    """Stands in for ServerState._prepare: "bad" fails at once, anything else takes `seconds`."""

    def __init__(self, seconds: float = 0.05):
        self.seconds, self.started, self.running, self.lock = seconds, 0, 0, threading.Lock()

    def __call__(self, value: str, field: str) -> torch.Tensor:
        if value == "bad":
            raise ApiError(400, f"{field}: not an image")
        with self.lock:
            self.started += 1
            self.running += 1
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return torch.zeros(3, 16, 16)


class FakeIndex:
    """A served index of `count` rows that records its searches (concurrency, exact, candidates)."""

    kind, name, dim = "text", "big", 64

    def __init__(self, count: int, ann: dict | None, seconds: float = 0.0):
        self.count, self.ann, self.seconds = count, ann, seconds
        self.calls, self.active, self.most = [], 0, 0
        self.lock = threading.Lock()

    def search(self, q, k, exact=False, max_candidates=None):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        self.calls.append((k, exact, max_candidates))
        time.sleep(self.seconds)
        with self.lock:
            self.active -= 1
        k = min(k, self.count)
        return torch.ones(1, k), torch.arange(k)[None]

    def view(self):  # one generation: a fake index has only one
        return self

    def items(self, rows):
        return [{"text": f"t{r}"} for r in rows]


# --------------------------------------------------------------------------------------------------
# finding 1 and 9e: a failed image request leaves no work behind; stopping waits for live work only


def test_a_failed_image_request_cancels_its_decode_jobs_and_holds_its_budget_until_they_stop(model):
    """Old failure: asyncio.gather raised the 400 at once but left the other 40 decode jobs queued in the
    pool; they all ran afterwards with images_held already back at 0 (so repeating the request walked
    past --max-concurrent and the images-held budget), and stopping the server waited for all of them
    (~1 s here) -- SIGTERM draining orphaned work (finding 9e)."""
    decodes = SlowDecodes()

    async def go():
        state = ServerState.build(model, {}, Settings(), decode_threads=2)
        state._prepare = decodes
        await state.batcher.start()
        with pytest.raises(ApiError) as e:
            await state.embed_images(["ok", "bad"] + ["ok"] * 40, "images")
        assert e.value.status == 400 and "images[1]" in e.value.message
        started, held = decodes.started, state.images_held
        await asyncio.sleep(0.4)  # old code: ~8 more decodes start in this time
        t = time.perf_counter()
        await state.batcher.stop()
        return started, held, decodes.started, time.perf_counter() - t

    started, held, later, stop_s = asyncio.run(go())
    assert started <= 3 and held == 0  # only the jobs already running finished, then the budget came back
    assert later == started, f"{later - started} decode jobs ran after the request had failed"
    assert stop_s < 0.3, f"stopping took {stop_s:.2f} s: it waited for orphaned decode jobs"


def test_a_request_that_goes_away_holds_its_budget_until_its_decode_stops(model):
    """Old failure: a cancelled request (client gone) gave its images-held budget back while its decode
    job still ran (the queued ones were cancelled by gather already)."""
    decodes = SlowDecodes()

    async def go():
        state = ServerState.build(model, {}, Settings(), decode_threads=1)
        state._prepare = decodes
        await state.batcher.start()
        task = asyncio.create_task(state.embed_images(["ok"] * 30, "images"))
        await asyncio.sleep(0.12)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        started, running, held = decodes.started, decodes.running, state.images_held
        await asyncio.sleep(0.3)
        await state.batcher.stop()
        return started, decodes.started, running, held

    started, later, running, held = asyncio.run(go())
    assert running == 0 and held == 0, f"budget back to {held} while {running} decode ran"
    assert later == started <= 4


# --------------------------------------------------------------------------------------------------
# finding 3: one request fails alone


def test_a_lone_surrogate_is_refused_before_batching_and_fails_no_neighbour(model):
    """Old failure: {"input": ["a \\ud800"]} passed validation and the tokenizer raised inside the batch,
    so the request (and every request batched with it) got a 500."""
    with TestClient(
        create_app(ServerState.build(model, {"big": FakeIndex(10, None)}, Settings())), base_url="http://127.0.0.1"
    ) as client:
        for path, body in [
            ("/v1/embeddings", b'{"input": ["a cat", "a \\ud800"]}'),
            ("/v1/search", b'{"text": "\\udfff x"}'),
            ("/v1/classify", b'{"images": ["AAAA"], "labels": ["cat", "\\ud800"]}'),
            ("/knn-service", b'{"text": "\\ud800"}'),
        ]:
            r = client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (path, r.status_code, r.text)
            assert "lone surrogate" in r.json()["error"]["message"], r.text
        assert client.post("/v1/embeddings", json={"input": "a cat"}).status_code == 200


def test_a_failing_batch_is_retried_request_by_request(model):
    """Old failure: the batch's one exception was set on every request in it: "a cat", batched with a
    text the tokenizer cannot take, failed too (500). Now it gets its rows, the other an InputFailed (400)."""

    async def go():
        b = Batcher(model, max_batch=8, max_wait_ms=50)
        await b.start()
        b._expect = 2  # as under load: the worker waits for the second request
        try:
            return await asyncio.gather(
                b.embed("text", ["a \ud800"]), b.embed("text", ["a cat"]), return_exceptions=True
            )
        finally:
            await b.stop()

    bad, good = asyncio.run(go())
    assert isinstance(bad, batching.InputFailed), bad
    torch.testing.assert_close(good, model.embed_texts(["a cat"]), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# finding 6: classify prompts through the queue; searches bounded


def test_classify_prompts_go_through_the_queue_and_match_the_model(model, tmp_path):
    """Old failure: the label prompts ran in the model thread outside the batcher (no --max-queue, no
    batch metrics); a template like "{} {}" raised inside it (500)."""
    from tests.conftest import write_image

    state = ServerState.build(model, {}, Settings())
    kinds = []
    embed = state.batcher.embed

    async def recording(kind, inputs):
        kinds.append((kind, len(inputs)))
        return await embed(kind, inputs)

    state.batcher.embed = recording
    png = write_image(tmp_path / "a.png", (200, 30, 30), (20, 18))
    image = __import__("base64").b64encode(png.read_bytes()).decode()
    labels, templates = ["cat", "dog", "car"], ["a photo of a {}.", "a {}"]
    with TestClient(create_app(state), base_url="http://127.0.0.1") as client:
        r = client.post("/v1/classify", json={"images": [image], "labels": labels, "templates": templates})
        assert r.status_code == 200, r.text
        bad = client.post("/v1/classify", json={"images": [image], "labels": labels, "templates": ["{} {}"]})
        assert bad.status_code == 400 and "templates[0]" in bad.json()["error"]["message"], bad.text
    assert ("text", 6) in kinds and ("image", 1) in kinds
    want = model.classify([png], labels, templates)[0]
    torch.testing.assert_close(torch.tensor(r.json()["results"][0]["probabilities"]), want, atol=1e-4, rtol=0)


def test_search_limits_k_candidates_and_exact_scans(model):
    """Old failure: k up to 10,000 (100k IVF-PQ candidates re-read per request), no candidate budget,
    and "exact": true scanned any index, 40 requests at a time (the thread pool's size)."""
    ix = FakeIndex(5_000_000, {"kind": "ivf-pq"}, seconds=0.1)
    settings = Settings(max_k=100, max_candidates=777, max_exact_rows=1_000_000, max_scans=1)
    vec = [1.0] + [0.0] * (model.dim - 1)
    with TestClient(create_app(ServerState.build(model, {"big": ix}, settings)), base_url="http://127.0.0.1") as client:
        r = client.post("/v1/search", json={"vector": vec, "k": 101})
        assert r.status_code == 400 and "k: 101 is out of range [1, 100]" in r.text
        r = client.post("/knn-service", json={"embedding_input": vec, "num_images": 101})
        assert r.status_code == 400 and "num_images" in r.text
        r = client.post("/knn-service", json={"embedding_input": vec, "num_result_ids": 3000})  # clip-front's
        assert r.status_code == 200 and len(r.json()) == 100  # capped at --max-k, not refused
        assert client.post("/v1/search", json={"vector": vec, "k": 100}).status_code == 200
        assert ix.calls[-1] == (100, False, 777)  # the candidate budget reaches the index
        r = client.post("/v1/search", json={"vector": vec, "exact": True})
        assert r.status_code == 400 and "--max-exact-rows" in r.json()["error"]["message"]
    small = FakeIndex(1000, {"kind": "ivf-flat"}, seconds=0.15)
    with TestClient(
        create_app(ServerState.build(model, {"small": small}, settings)), base_url="http://127.0.0.1"
    ) as client:
        threads = [
            threading.Thread(target=client.post, args=("/v1/search",), kwargs={"json": {"vector": vec, "exact": True}})
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(small.calls) == 4 and all(c[1] for c in small.calls) and small.most == 1  # one scan at a time


def test_the_candidate_budget_caps_what_an_approximate_search_reads(monkeypatch):
    """Old failure: rerank x k candidates whatever k (no budget): k = 10,000 on IVF-PQ re-read 100k rows."""
    import siglip.index.generation as handle  # approx_search lives there since indexes open by generation
    from siglip.index.ann_plan import Plan

    asked = []

    def fake_search(index, q, n):
        asked.append(n)
        return np.tile(np.arange(n), (len(q), 1))

    monkeypatch.setattr(handle.ann, "search", fake_search)
    rows = np.random.default_rng(0).standard_normal((50_000, 8)).astype(np.float32)
    q = torch.randn(1, 8)
    handle.approx_search(rows, None, Plan("ivf-pq", rerank=10), q, 1000, max_candidates=3000)
    handle.approx_search(rows, None, Plan("ivf-pq", rerank=10), q, 5000, max_candidates=3000)
    handle.approx_search(rows, None, Plan("ivf-pq", rerank=10), q, 100)
    assert asked == [3000, 5000, 1000]  # capped, never under k, and unchanged without a budget


# --------------------------------------------------------------------------------------------------
# finding 8: vectors checked in float32


def test_vectors_out_of_float32_range_or_zero_in_float32_are_refused(model):
    """Old failure: [1e39, 0, ...] is finite in float64, inf in float32: NaN scores (a bare NaN in
    /v1/search's JSON, null in /knn-service); [1e-46, ...] became the zero vector past the zero check."""
    ix = FakeIndex(10, None)
    d = model.dim
    with TestClient(
        create_app(ServerState.build(model, {"big": ix}, Settings())), base_url="http://127.0.0.1"
    ) as client:
        for vec, words in [([1e39] + [0.0] * (d - 1), "vector[0]: 1e+39 is out of float32's range"),
                           ([1e-46] + [0.0] * (d - 1), "zero vector"),
                           ([10**400] + [0] * (d - 1), "vector[0]: expected a finite number")]:  # fmt: skip
            r = client.post("/v1/search", json={"vector": vec})
            assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
            r = client.post("/knn-service", json={"embedding_input": vec})
            assert r.status_code == 400, r.text
        r = client.post("/v1/search", json={"vector": [1e-40, 3e38] + [0.0] * (d - 2)})  # tiny and huge: fine
        assert r.status_code == 200 and "NaN" not in r.text


# --------------------------------------------------------------------------------------------------
# efficiency: a lone client does not wait for a batch


def test_a_lone_client_does_not_wait_for_a_batch_to_fill(model):
    """Old failure: every request waited --max-wait-ms for others even when nobody else was there (here
    200 ms a request); now a batch waits only for as many requests as were about at the last one's end."""

    async def go():
        b = Batcher(model, max_batch=32, max_wait_ms=200)
        await b.start()
        try:
            await b.embed("text", ["warm"])
            t = time.perf_counter()
            for i in range(5):
                await b.embed("text", [f"a cat {i}"])
            lone = (time.perf_counter() - t) / 5
            b._expect = 2  # a loaded server: one arrival waits for the next, up to 200 ms
            t = time.perf_counter()
            await b.embed("text", ["x"])
            return lone, time.perf_counter() - t
        finally:
            await b.stop()

    lone, loaded = asyncio.run(go())
    assert lone < 0.1, f"{1000 * lone:.0f} ms a request for a lone client"
    assert loaded >= 0.15  # under load the wait still gathers a batch


def test_a_bad_image_cancels_the_texts_of_its_request(model):
    """Old failure: /v1/embeddings with a text and a bad image answered 400, but asyncio.gather left the
    text queued, and the model embedded it afterwards for nobody."""
    from siglip.serve.openai import embed_mixed

    decodes, texts_run = SlowDecodes(), []

    async def go():
        state = ServerState.build(model, {}, Settings())
        state._prepare = decodes
        forward, gate = state.batcher._forward, threading.Event()

        def held(kind, inputs):  # "hold" keeps the model busy until the gate opens
            texts_run.append(inputs)
            return gate.wait() and forward(kind, inputs)

        state.batcher._forward = held
        await state.batcher.start()
        busy = asyncio.ensure_future(state.batcher.embed("text", ["hold"]))
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError):
            await embed_mixed(state, ["a cat", "bad"], [False, True])
        gate.set()
        await busy
        await asyncio.sleep(0.1)
        await state.batcher.stop()

    asyncio.run(go())
    assert texts_run == [["hold"]], f"the model embedded {texts_run[1:]} after the request had failed"
