"""An index that changes while it is served (issue 31, finding 4 and 9): `siglip embed` appending or
rewriting it (--overwrite), `siglip index` building its approximate index. Each request answers from
one generation, whole; the old files go only when nobody reads them; old thumbnail URLs get 410.
In-process: create_app under Starlette's TestClient, the writers run as `siglip` commands."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import siglip
from siglip.cli import main
from siglip.config import ModelConfig
from siglip.model import SigLIP
from tests.conftest import write_image, write_tar

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from siglip.serve.app import create_app  # noqa: E402
from siglip.serve.images import ShardMembers, thumbnail_query  # noqa: E402
from siglip.serve.indexes import open_indexes  # noqa: E402
from siglip.serve.state import ServerState, Settings  # noqa: E402

KEY = {"Authorization": "Bearer k"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, tokenizer) -> Path:
    torch.manual_seed(0)
    net = SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size))
    path = tmp_path_factory.mktemp("generations") / "m.pt"
    siglip.save_model(path, net, tokenizer, "bicubic")
    return path


def colours(n: int, seed: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(n)]


def embed(model_path: Path, src: Path, out: Path, *extra: str) -> None:
    common = ["--model", str(model_path), "--workers", "0", "--store-dtype", "float32"]
    assert main(["embed", str(src), "--out", str(out), *common, *extra]) == 0


def photos(folder: Path, n: int, seed: int, start: int = 0) -> list[Path]:
    return [write_image(folder / f"{start + i:02d}.png", c, (16 + i, 14)) for i, c in enumerate(colours(n, seed))]


def client_for(model_path: Path, index: Path, **settings) -> TestClient:
    model = siglip.load(model_path)
    indexes = open_indexes([f"p={index}"], model.fingerprint, str(model_path))
    state = ServerState.build(model, indexes, Settings(api_key="k", **settings), max_batch=4, max_wait_ms=0)
    return TestClient(create_app(state), base_url="http://127.0.0.1")  # a Host the server answers to


def search(client: TestClient, vector: list[float], k: int = 20) -> dict:
    r = client.post("/v1/search", json={"index": "p", "vector": vector, "k": k}, headers=KEY)
    assert r.status_code == 200, r.text
    return r.json()


def brute_force(index: Path) -> dict[str, np.ndarray]:
    """path -> stored row, read from the index's current files."""
    meta = json.loads((index / "meta.json").read_text())
    rows = np.load(index / meta["embeddings"])
    items = [json.loads(line) for line in (index / meta["items"]).read_text().splitlines()]
    return {it["path"]: rows[i] for i, it in enumerate(items)}


def test_append_while_served_shows_the_new_items_and_never_answers_500(model_path, tmp_path):
    """Old failure: after `siglip embed` appended, consolidation deleted embeddings-1.npy and
    items-1.jsonl while the server reopened them by name: /v1/search, /metadata and thumbnails
    answered 500 (FileNotFoundError) until a restart, and the new items never showed."""
    index = tmp_path / "p.index"
    old = photos(tmp_path / "photos", 3, seed=1)
    embed(model_path, tmp_path / "photos", index)
    with client_for(model_path, index) as client:
        ix = client.app.state.siglip.indexes["p"]
        held = ix.view()  # a request in flight across the append
        query = brute_force(index)[str(old[0])].tolist()
        before = search(client, query)
        assert len(before["hits"]) == 3 and before["hits"][0]["path"] == str(old[0])
        old_url = before["hits"][0]["thumbnail"]
        errors: list[BaseException] = []
        stop = threading.Event()

        def reader() -> None:  # searches and item reads racing the writer, from whatever generation is newest
            while not stop.is_set():
                try:
                    v = ix.view()
                    _, rows = v.search(torch.tensor([query]), 10)
                    assert len(v.items(rows[0].tolist())) == v.count
                except BaseException as e:  # noqa: BLE001 - collected and re-raised below
                    errors.append(e)
                    return

        t = threading.Thread(target=reader)
        t.start()
        new = photos(tmp_path / "photos", 2, seed=2, start=3)
        embed(model_path, tmp_path / "photos", index)  # appends: generation 2
        stop.set()
        t.join()
        assert not errors, errors
        assert not (index / held.gen.meta["embeddings"]).exists()  # the old generation's files are gone...
        _, rows = held.search(torch.tensor([query]), 3)  # ...but the request holding them still reads them
        assert [it["path"] for it in held.items(rows[0].tolist())][0] == str(old[0])

        after = search(client, query)
        assert sorted(h["path"] for h in after["hits"]) == sorted(map(str, old + new))
        meta = client.post("/metadata", json={"ids": [3, 4], "indice_name": "p"}, headers=KEY)
        assert meta.status_code == 200 and all(m["metadata"]["url"] for m in meta.json())
        fresh = client.get(after["hits"][0]["thumbnail"])
        assert fresh.status_code == 200 and fresh.headers["content-type"] == "image/jpeg"
        stale = client.get(old_url)  # names generation 1: 410, never whatever row 0 is now
        assert stale.status_code == 410 and "changed" in stale.json()["error"]["message"]
        if Path("/proc/self/maps").is_file():  # Linux: what the process holds, from /proc
            assert held_files(index)  # the request still holding generation 1 keeps its (deleted) files
            del held
            gc.collect()
            assert not held_files(index)  # once nobody reads them, no fd or map is left on them


def held_files(index: Path) -> list[str]:
    """Files of `index` this process still holds (fds and memory maps) that are deleted."""
    links = [line.split(maxsplit=5)[-1] for line in Path("/proc/self/maps").read_text().splitlines()]
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd listdir itself used is gone
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    return [x for x in links if x.startswith(str(index)) and x.endswith("(deleted)")]


def test_overwrite_while_served_switches_to_the_new_set_whole(model_path, tmp_path, caplog):
    """Old failure: --overwrite reused the file names (generation 1 again) while the server kept the
    old approximate index and rows: hits mapped old row ids onto the new items (wrong paths and
    scores), and an old thumbnail URL showed another image (200). Now the rewrite is generation 2,
    the approximate index of generation 1 is ignored with a warning (exact search) until `siglip
    index` runs again, and the old URL answers 410."""
    pytest.importorskip("faiss")
    index = tmp_path / "p.index"
    photos(tmp_path / "a", 4, seed=3)
    embed(model_path, tmp_path / "a", index)
    assert main(["index", str(index), "--kind", "hnsw", "--queries", "4"]) == 0
    with client_for(model_path, index) as client:
        ix = client.app.state.siglip.indexes["p"]
        assert ix.ann is not None
        q = next(iter(brute_force(index).values())).tolist()
        old_url = search(client, q)["hits"][0]["thumbnail"]
        assert client.get(old_url).status_code == 200

        b = photos(tmp_path / "b", 4, seed=4)  # another set, the same size
        embed(model_path, tmp_path / "b", index, "--overwrite")
        assert json.loads((index / "meta.json").read_text())["generation"] == 2
        rows = brute_force(index)
        q = rows[str(b[2])].tolist()
        with caplog.at_level(logging.WARNING):
            hits = search(client, q)["hits"]
        assert "stale" in caplog.text and ix.ann is None  # ann.json covers generation 1: exact search
        assert [h["path"] for h in hits][0] == str(b[2]) and {h["path"] for h in hits} == set(map(str, b))
        for h in hits:  # every hit's score is its own row's: no row id of generation 1 mapped onto these items
            assert h["cosine"] == pytest.approx(float(rows[h["path"]] @ np.asarray(q)), abs=1e-5)
        assert client.get(old_url).status_code == 410

        assert main(["index", str(index), "--kind", "hnsw", "--queries", "4"]) == 0  # ann.json of generation 2
        assert ix.ann is not None and ix.ann["generation"] == 2
        assert search(client, q)["hits"][0]["path"] == str(b[2])


def test_an_index_folder_written_before_generations_opens_and_follows(model_path, tmp_path):
    """meta.json as the code before this change wrote it (no "uid"; files embeddings-1.npy, ...): it
    opens, serves, and picks up an append. Old failure of the append: as in the first test (500)."""
    index = tmp_path / "p.index"
    photos(tmp_path / "photos", 2, seed=5)
    embed(model_path, tmp_path / "photos", index)
    meta = json.loads((index / "meta.json").read_text())
    meta.pop("uid", None)
    (index / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    assert meta["embeddings"] == "embeddings-1.npy" and meta["items"] == "items-1.jsonl"
    with client_for(model_path, index) as client:
        q = next(iter(brute_force(index).values())).tolist()
        assert len(search(client, q)["hits"]) == 2
        photos(tmp_path / "photos", 1, seed=6, start=2)
        embed(model_path, tmp_path / "photos", index)
        assert len(search(client, q)["hits"]) == 3
        assert "uid" in json.loads((index / "meta.json").read_text())


def test_expired_or_tampered_thumbnail_urls_are_refused(model_path, tmp_path):
    """--url-ttl: a URL past its `exp` answers 410; a signed URL whose exp or generation was edited
    answers 403. Old failure: signed URLs never expired and did not name a generation."""
    index = tmp_path / "p.index"
    photos(tmp_path / "photos", 2, seed=7)
    embed(model_path, tmp_path / "photos", index)
    with client_for(model_path, index, url_ttl_s=60) as client:
        q = next(iter(brute_force(index).values())).tolist()
        url = search(client, q)["hits"][0]["thumbnail"]
        assert client.get(url).status_code == 200
        tag = client.app.state.siglip.indexes["p"].view().tag
        path = url.split("?")[0]
        expired = thumbnail_query("k", "p", 0, tag, ttl_s=-10)
        r = client.get(f"{path.rsplit('/', 2)[0]}/0/thumbnail?{expired}")
        assert r.status_code == 410 and "expired" in r.json()["error"]["message"]
        exp = int(url.rsplit("exp=", 1)[1])
        assert client.get(url.replace(f"exp={exp}", f"exp={exp + 3600}")).status_code == 403
        assert client.get(url.replace(f"g={tag}", "g=9-0000000000")).status_code == 403


def test_thumbnail_of_a_shard_that_is_gone_is_404(model_path, tmp_path):
    """Old failure (9a): image_source ran outside the try, so a deleted shard raised FileNotFoundError
    through the route: 500."""
    members = {}
    for i, c in enumerate(colours(2, seed=8)):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), c).save(buf, format="PNG")
        members[f"k{i}.png"] = buf.getvalue()
    shard = write_tar(tmp_path / "shard-0.tar", members)
    index = tmp_path / "s.index"
    embed(model_path, tmp_path / "shard-{0..0}.tar", index)
    with client_for(model_path, index) as client:
        q = np.load(index / "embeddings-1.npy")[0].tolist()
        url = search(client, q)["hits"][0]["thumbnail"]
        shard.unlink()
        r = client.get(url)
        assert r.status_code == 404 and "cannot be read" in r.json()["error"]["message"]


def test_shard_tables_are_bounded_and_follow_a_rewritten_shard(tmp_path):
    """Old failure (9b): ShardMembers kept every shard's member table forever (no bound), and kept
    a rewritten shard's old offsets (bytes of another member)."""
    cache = ShardMembers(size=2)
    for s in range(3):
        write_tar(tmp_path / f"{s}.tar", {"a.jpg": b"x" * (s + 1), "b.jpg": b"y"})
        assert cache.read(str(tmp_path / f"{s}.tar"), "a") == b"x" * (s + 1)
    assert len(cache) == 2
    write_tar(tmp_path / "2.tar", {"c.jpg": b"zzzzzzzz", "a.jpg": b"new"})  # same name, other layout
    assert cache.read(str(tmp_path / "2.tar"), "a") == b"new"


def test_a_malformed_ann_json_warns_and_searches_exactly(model_path, tmp_path, caplog):
    """Old failure (9d): ann.json with "plan": "x" raised TypeError from Plan.from_json inside
    open_indexes, so `siglip serve` did not start."""
    pytest.importorskip("faiss")
    index = tmp_path / "p.index"
    photos(tmp_path / "photos", 3, seed=9)
    embed(model_path, tmp_path / "photos", index)
    assert main(["index", str(index), "--kind", "hnsw", "--queries", "3"]) == 0
    desc = json.loads((index / "ann.json").read_text())
    (index / "ann.json").write_text(json.dumps({**desc, "plan": "x"}))  # otherwise a valid ann.json
    model = siglip.load(model_path)
    with caplog.at_level(logging.WARNING):
        ix = open_indexes([f"p={index}"], model.fingerprint, str(model_path))["p"]
    assert "plan" in caplog.text and ix.ann is None
    rows = np.load(index / "embeddings-1.npy")
    _, got = ix.search(torch.from_numpy(rows[1:2]), 3)
    assert got[0].tolist() == np.argsort(-(rows @ rows[1]), kind="stable")[:3].tolist()


def test_a_generation_of_other_weights_is_not_switched_to(model_path, tmp_path, tokenizer, caplog):
    """`siglip embed --overwrite` with another model commits a generation whose rows the served model
    cannot query: the index keeps answering from the one it has, with a warning naming the fingerprints.
    (Before generations an --overwrite was never followed at all; this guards the new switch.)"""
    index = tmp_path / "p.index"
    photos(tmp_path / "photos", 2, seed=10)
    embed(model_path, tmp_path / "photos", index)
    idx = siglip.index.open(index)
    torch.manual_seed(1)
    net = SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size))
    siglip.save_model(tmp_path / "other.pt", net, tokenizer, "bicubic")
    photos(tmp_path / "photos", 1, seed=11, start=2)
    embed(tmp_path / "other.pt", tmp_path / "photos", index, "--overwrite")
    with caplog.at_level(logging.WARNING):
        assert idx.count == 2 and idx.meta["generation"] == 1
    assert "other weights" in caplog.text
    assert json.loads((index / "meta.json").read_text())["count"] == 3  # the rewrite itself committed
