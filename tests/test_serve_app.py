"""create_app in-process (Starlette's TestClient runs its lifespan, so the batching worker starts and
stops with it): --public-url in the URLs handed out, and a server that holds no index."""

from __future__ import annotations

import pytest
import torch

import siglip
from siglip.config import ModelConfig
from siglip.model import SigLIP

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from starlette.requests import Request  # noqa: E402

from siglip.serve.app import create_app  # noqa: E402
from siglip.serve.images import url_signature  # noqa: E402
from siglip.serve.state import ServerState, Settings  # noqa: E402


def test_public_url_signature_and_no_index(tmp_path, tokenizer):
    torch.manual_seed(0)
    net = SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size))
    siglip.save_model(tmp_path / "m.pt", net, tokenizer, "bicubic")
    model = siglip.load(tmp_path / "m.pt")
    settings = Settings(api_key="k", public_url="https://search.example.org/")
    state = ServerState.build(model, {}, settings, max_batch=4, max_wait_ms=0, max_queue=4)
    local = Request({"type": "http", "headers": [], "server": ("127.0.0.1", 8000), "path": "/", "scheme": "http"})
    url = state.thumbnail_url(local, "a b", 3, "2-abc")  # not the request's own host: the public one
    exp = url.rsplit("exp=", 1)[1]
    sig = url_signature("k", "a b", 3, "2-abc", exp)
    assert url == f"https://search.example.org/items/a%20b/3/thumbnail?sig={sig}&g=2-abc&exp={exp}"
    key = {"Authorization": "Bearer k"}
    with TestClient(create_app(state), base_url="https://search.example.org") as client:  # its Host is allowed
        r = client.post("/v1/embeddings", json={"input": "a cat"}, headers=key)
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == model.dim
        r = client.post("/v1/search", json={"text": "a"}, headers=key)
        assert r.status_code == 400 and "--index NAME=PATH" in r.json()["error"]["message"]
        assert client.get("/indices-list", headers=key).json() == []
