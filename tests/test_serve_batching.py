"""The batching queue in-process, on a stand-in model that records its calls: concurrent requests
share model calls up to --max-batch, each gets its own rows, --max-batch 1 is one call per request,
a full queue raises Overloaded, and a failing model call fails its requests but not the worker."""

from __future__ import annotations

import asyncio

import pytest
import torch

pytest.importorskip("fastapi")

from siglip.serve.batching import Batcher, InputFailed, Overloaded  # noqa: E402


class Recorder:
    """embed_texts: row i is [len(text), first char code, 0, 0]; records each call's size."""

    dim = 4

    def __init__(self, fail_on: str = ""):
        self.calls: list[int] = []
        self.fail_on = fail_on

    def embed_texts(self, texts, batch_size=256):
        self.calls.append(len(texts))
        if self.fail_on in texts:
            raise ValueError(f"cannot embed {self.fail_on!r}")
        return torch.tensor([[len(t), ord(t[0]), 0, 0] for t in texts], dtype=torch.float32)

    def embed_images(self, batch, batch_size=64):
        self.calls.append(len(batch))
        return batch.reshape(len(batch), -1)[:, :4].float()


def run(coro):
    return asyncio.run(coro)


async def with_batcher(model, fn, **kw):
    b = Batcher(model, **kw)
    await b.start()
    try:
        return await fn(b)
    finally:
        await b.stop()


def want(texts):
    return torch.tensor([[len(t), ord(t[0]), 0, 0] for t in texts], dtype=torch.float32)


@pytest.mark.parametrize("max_batch,max_calls", [(8, 3), (1, 12)])
def test_concurrent_requests_share_calls_and_get_their_own_rows(max_batch, max_calls):
    model = Recorder()
    requests = [[f"{chr(97 + i)}" * (i + 1), f"{chr(65 + i)}"][: 1 + i % 2] for i in range(12)]  # 18 texts

    async def go(b):
        return await asyncio.gather(*(b.embed("text", r) for r in requests))

    rows = run(with_batcher(model, go, max_batch=max_batch, max_wait_ms=50))
    for r, got in zip(requests, rows):
        torch.testing.assert_close(got, want(r))
    assert sum(model.calls) == 18
    if max_batch == 1:
        assert model.calls == [len(r) for r in requests]  # one request per call, in order
    else:
        assert len(model.calls) <= max_calls and max(model.calls) <= max_batch


def test_texts_and_images_go_in_separate_calls():
    model = Recorder()
    images = [torch.full((3, 2, 2), float(i)) for i in range(3)]

    async def go(b):
        return await asyncio.gather(b.embed("text", ["ab", "c"]), b.embed("image", images), b.embed("text", ["d"]))

    t1, im, t2 = run(with_batcher(model, go, max_batch=8, max_wait_ms=50))
    torch.testing.assert_close(t1, want(["ab", "c"]))
    torch.testing.assert_close(t2, want(["d"]))
    torch.testing.assert_close(im[:, 0], torch.tensor([0.0, 1.0, 2.0]))
    assert sorted(model.calls) == [3, 3]  # the two text requests together, the images alone


def test_a_full_queue_raises_overloaded_and_the_rest_are_served():
    model = Recorder()

    async def go(b):
        results = await asyncio.gather(*(b.embed("text", [f"x{i}"]) for i in range(10)), return_exceptions=True)
        return results, b.depth

    results, depth = run(with_batcher(model, go, max_batch=1, max_wait_ms=0, max_queue=4))
    refused = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if isinstance(r, torch.Tensor)]
    assert len(refused) == 6 and len(served) == 4 and depth == 0


def test_a_failing_call_fails_its_own_request_only_and_the_worker_lives_on():
    """A failed batch is retried request by request: "ok" gets its rows, "boom" an InputFailed (the
    routes' 400). Before issue 31 both got the batch's ValueError."""
    model = Recorder(fail_on="boom")

    async def go(b):
        bad = await asyncio.gather(b.embed("text", ["boom"]), b.embed("text", ["ok"]), return_exceptions=True)
        good = await b.embed("text", ["fine"])
        return bad, good

    bad, good = run(with_batcher(model, go, max_batch=8, max_wait_ms=20))
    assert isinstance(bad[0], InputFailed) and "cannot embed 'boom'" in str(bad[0])
    torch.testing.assert_close(bad[1], want(["ok"]))
    torch.testing.assert_close(good, want(["fine"]))
    assert model.calls[:3] == [2, 1, 1]  # the batch, then each request alone


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="--max-batch 0"):
        Batcher(Recorder(), max_batch=0)
