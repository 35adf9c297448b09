"""The approximate index (`siglip index`, `siglip.index.open`) on clustered unit vectors whose clusters
overlap: the plan under a budget, recall against a brute-force reference (also under a budget below
the float16 rows, where PQ codes alone fall short and re-ranking with the exact rows wins it back),
exact re-ranked scores, appends by `siglip embed` (updated or stale), damaged and foreign files,
interruption and resumption, the command line."""

import json
import logging
import shutil
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("faiss")

import siglip.index
import siglip.index.ann as ann
import siglip.index.ann_build as ann_build
from siglip.cli import main
from siglip.index.ann_plan import Plan, choose, estimate_bytes, parse_size
from siglip.index.ann_update import follow_append
from siglip.index.search import topk_file
from siglip.index.store import consolidate, read_meta, write_part
from tests.index_helpers import make_index
from tests.test_cli import embed, save_tiny, world  # noqa: F401 - the fixture

N, D = 24_000, 64


def clustered(n: int, d: int, seed: int = 0, clusters: int = 48) -> np.ndarray:
    """Unit vectors from a mixture of Gaussians on the sphere whose clusters overlap: each point lies
    between two random centres (a random mix), plus isotropic noise. (n, d) float32."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((clusters, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    a, b, w = rng.integers(clusters, size=n), rng.integers(clusters, size=n), rng.uniform(size=(n, 1))
    x = w * c[a] + (1 - w) * c[b] + 0.6 * rng.standard_normal((n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute(rows: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The naive reference: float32 cosines of the stored float16 rows, full sort."""
    s = q @ rows.astype(np.float16).astype(np.float32).T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, 1), ids


def recall10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    both = clustered(N + 300, D)  # rows and new points of the same mixture as queries
    return both[:N], both[N:]


@pytest.fixture(scope="module")
def pq_index(tmp_path_factory, data):
    """An index of N x 64 rows with an approximate index built under 1 MiB (the float16 rows: 3 MiB)."""
    path = make_index(tmp_path_factory.mktemp("ann") / "idx", data[0])
    desc = ann_build.build(path, ann_build.BuildOptions(max_memory="1M", queries=100, progress=False))
    return path, desc


def test_plan_under_a_budget():
    assert parse_size("4G") == 4 << 30 and parse_size("512m") == 512 << 20 and parse_size("2GB") == 2 << 30
    with pytest.raises(ValueError, match="--max-memory"):
        parse_size("lots")
    assert choose(50_000, 768, 4 << 30).kind == "flat"
    assert choose(1_000_000, 768, 4 << 30).kind == "ivf-flat"  # 3 GiB of float32 rows fit in 4 GiB
    p = choose(10_000_000, 768, 2 << 30)
    assert p.kind == "ivf-pq" and estimate_bytes(p, 10_000_000, 768) <= 2 << 30 and 768 % p.m == 0
    assert p.nbits == 4 and 768 // p.m >= 2 and "x4fsr" in p.factory()  # 4-bit fast-scan codes
    old = Plan.from_json({"kind": "ivf-pq", "nlist": 512, "m": 48, "nprobe": 4, "rerank": 100})  # an older ann.json
    assert old.nbits == 8 and old.factory() == "IVF512,PQ48np" and old.code_bytes == 48
    assert choose(20_000, 64, 100 << 20, kind="ivf-pq").m > choose(20_000, 64, 400 << 10, kind="ivf-pq").m
    with pytest.raises(ValueError, match="raise --max-memory or shard"):
        choose(10_000_000, 768, 100 << 20)
    with pytest.raises(ValueError, match="--kind"):
        choose(10, 8, 1 << 30, kind="lsh")


def test_auto_under_a_budget_below_the_float16_rows_reaches_recall_by_reranking(pq_index, data):
    path, desc = pq_index
    rows, queries = data
    assert desc["kind"] == "ivf-pq" and desc["memory_bytes"] <= parse_size("1M") < N * D * 2
    assert desc["recall"]["rows"]["recall@10"] >= 0.95
    assert desc["recall"]["rows"]["recall@10_codes_alone"] < 0.8  # the codes alone fall short
    idx = siglip.index.open(path)
    assert idx.ann is not None and idx.ann["kind"] == "ivf-pq"
    scores, ids = idx.search(queries, 10)
    want_s, want_ids = brute(rows, queries, 10)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and scores.shape == ids.shape == (300, 10)
    assert recall10(ids, want_ids) >= 0.95  # independently of the build's own measurement
    # the re-ranked scores are the exact cosines of those rows, in order
    exact_of_found = np.einsum("qkd,qd->qk", rows.astype(np.float16).astype(np.float32)[ids], queries)
    np.testing.assert_allclose(scores, exact_of_found, rtol=0, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()
    same = ids == want_ids
    np.testing.assert_allclose(scores[same], want_s[same], rtol=0, atol=1e-6)
    # without re-ranking (the codes' own order) recall is far lower: re-ranking is what wins it back
    fi, plan, _ = idx.approximate()
    alone = Plan.from_json({**plan.to_json(), "rerank": 1})
    _, ids_alone = siglip.index.handle.approx_search(idx.rows, fi, alone, torch.from_numpy(queries), 10)
    assert recall10(ids_alone, want_ids) < 0.85
    # exact=True is the chunked scan
    s2, i2 = idx.search(queries[:5], 10, exact=True)
    s3, i3 = topk_file(path / idx.meta["embeddings"], torch.from_numpy(queries[:5]), 10)
    assert np.array_equal(i2, i3.numpy()) and np.allclose(s2, s3.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["flat", "ivf-flat", "hnsw"])
def test_other_kinds_reach_recall(tmp_path, data, kind):
    rows, queries = data[0][:8000], data[1][:100]
    path = make_index(tmp_path / "idx", rows)
    desc = ann_build.build(path, ann_build.BuildOptions(kind=kind, queries=100, progress=False))
    assert desc["kind"] == kind and desc["recall"]["rows"]["recall@10"] >= 0.95
    _, ids = siglip.index.open(path).search(queries, 10)
    assert recall10(ids, brute(rows, queries, 10)[1]) >= 0.95


def _append(path, rows: np.ndarray, first: int) -> None:
    """What `siglip embed` does with new items: a part, then consolidate, then follow_append."""
    old = read_meta(path)
    keys = [f"img{first + i}.jpg" for i in range(len(rows))]
    write_part(path, keys, [{"path": k} for k in keys], rows.astype(np.float16), [], "f0")
    new = consolidate(path, {k: old[k] for k in ("kind", "model", "fingerprint", "dim", "dtype")}, {})
    return follow_append(path, old, new)


def test_appended_rows_join_the_approximate_index_or_it_is_stale(tmp_path, data, monkeypatch, caplog):
    rows, queries = data
    path = make_index(tmp_path / "idx", rows[:10_000])
    ann_build.build(path, ann_build.BuildOptions(max_memory="400K", queries=50, progress=False))
    assert _append(path, rows[10_000:22_000], 10_000) == "updated"
    idx = siglip.index.open(path)
    assert idx.count == 22_000 and idx.ann["rows"] == 22_000 and idx.ann["generation"] == 2
    assert idx.ann["plan"]["kind"] == "ivf-pq"
    assert len(list(path.glob("ann-*.faiss"))) == 1  # the old generation's file is gone
    _, ids = idx.search(queries, 10)
    assert recall10(ids, brute(rows[:22_000], queries, 10)[1]) >= 0.95
    assert (ids >= 10_000).any()  # the new rows are found
    # faiss missing at append time: nothing changes, the index is stale and never used silently
    monkeypatch.setattr(ann, "faiss", lambda: (_ for _ in ()).throw(ModuleNotFoundError("pip install 'siglip[ann]'")))
    with caplog.at_level(logging.WARNING):
        assert _append(path, rows[22_000:], 22_000) == "stale"
    assert "stale" in caplog.text and "siglip index" in caplog.text
    monkeypatch.undo()
    caplog.clear()
    idx = siglip.index.open(path)
    with caplog.at_level(logging.WARNING):
        assert idx.ann is None
        s, i = idx.search(queries[:3], 10)
        idx.search(queries[:3], 10)
    assert caplog.text.count("stale") == 1 and "searching exactly" in caplog.text  # warned once
    want = topk_file(path / idx.meta["embeddings"], torch.from_numpy(queries[:3]), 10)
    assert np.array_equal(i, want[1].numpy()) and np.allclose(s, want[0].numpy(), rtol=0, atol=1e-6)


def test_siglip_embed_updates_the_approximate_index(world, capsys):  # noqa: F811
    tmp, model_path = world
    extra = tmp / "photos" / "s0" / "extra"
    shutil.move(tmp / "photos" / "s1", tmp / "later")
    embed(tmp / "photos", "--model", model_path, "--out", tmp / "idx")
    capsys.readouterr()
    assert main(["index", str(tmp / "idx"), "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["kind"] == "flat" and desc["rows"] == 6
    shutil.move(tmp / "later", extra)
    embed(tmp / "photos", "--model", model_path, "--out", tmp / "idx")
    capsys.readouterr()
    idx = siglip.index.open(tmp / "idx")
    assert idx.count == 12 and idx.ann is not None and idx.ann["rows"] == 12
    assert main(["search", str(tmp / "idx"), "a red square", "-k", "12", "--json"]) == 0
    approx = json.loads(capsys.readouterr().out)
    assert main(["search", str(tmp / "idx"), "a red square", "-k", "12", "--json", "--exact"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert [r["cosine"] for r in approx] == pytest.approx([r["cosine"] for r in exact], abs=1e-6)
    key = lambda r: (round(r["cosine"], 5), r["path"])  # same-colour images tie: any order among them
    assert sorted(map(key, approx)) == sorted(map(key, exact)) and len(approx) == 12


def test_damaged_or_foreign_files_are_refused_by_name_and_exact_search_answers(tmp_path, data, caplog):
    rows, queries = data[0][:6000], data[1][:4]
    path = make_index(tmp_path / "idx", rows)
    desc = ann_build.build(path, ann_build.BuildOptions(kind="ivf-flat", queries=20, progress=False))
    want = topk_file(path / read_meta(path)["embeddings"], torch.from_numpy(queries), 5)
    faiss_file = path / desc["file"]
    good = faiss_file.read_bytes()
    damaged = {
        "flipped": lambda: faiss_file.write_bytes(good[:500] + bytes([good[500] ^ 1]) + good[501:]),
        "truncated": lambda: faiss_file.write_bytes(good[: len(good) // 2]),
        "garbage json": lambda: (path / "ann.json").write_text("{not json"),
    }
    for name, damage in damaged.items():
        damage()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            idx = siglip.index.open(path)
            s, i = idx.search(queries, 5)
        assert idx.ann is None, name
        named = "ann.json" if name == "garbage json" else desc["file"]
        assert named in caplog.text and "searching exactly" in caplog.text, name
        assert np.array_equal(i, want[1].numpy()) and np.allclose(s, want[0].numpy(), rtol=0, atol=1e-6), name
        faiss_file.write_bytes(good)
        (path / "ann.json").write_text(json.dumps(desc))
    # unreadable even without a CRC to catch it: faiss's own error, naming the file
    (path / "ann.json").write_text(json.dumps({**desc, "crc32": None}))
    faiss_file.write_bytes(b"not a faiss index at all")
    with pytest.raises(ValueError, match=desc["file"]):
        ann.read(faiss_file)
    # foreign: another index's ann files with the same row count and generation
    other = make_index(tmp_path / "other", clustered(6000, D, seed=3))
    shutil.copy(path / "ann.json", other / "ann.json")
    faiss_file.write_bytes(good)
    shutil.copy(faiss_file, other / desc["file"])
    (other / "ann.json").write_text(json.dumps(desc))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert siglip.index.open(other).ann is None
    assert "foreign" in caplog.text


def test_interrupted_build_continues_where_it_stopped(tmp_path, data, monkeypatch):
    rows = data[0][:12_000]
    monkeypatch.setattr(ann_build, "CHUNK_ROWS", 2000)
    fresh = make_index(tmp_path / "fresh", rows)
    ann_build.build(fresh, ann_build.BuildOptions(kind="ivf-flat", nprobe=4, queries=20, progress=False))
    path = make_index(tmp_path / "idx", rows)
    real_add, calls = ann.add, []

    def add_then_stop(fi, x):
        calls.append(len(x))
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_add(fi, x)

    monkeypatch.setattr(ann, "add", add_then_stop)
    with pytest.raises(RuntimeError, match="interrupted at row 4000 of 12000.*run the same command again"):
        ann_build.build(path, ann_build.BuildOptions(kind="ivf-flat", nprobe=4, queries=20, progress=False))
    assert (path / "ann-partial.faiss").is_file() and not (path / "ann.json").exists()
    monkeypatch.setattr(ann, "add", lambda fi, x: (calls.append(len(x)), real_add(fi, x)))
    ann_build.build(path, ann_build.BuildOptions(kind="ivf-flat", nprobe=4, queries=20, progress=False))
    assert sum(calls[3:7]) == 8000  # continued from row 4000, did not start again
    assert not (path / "ann-partial.faiss").exists()
    q = clustered(50, D, seed=9)
    a, b = siglip.index.open(path).search(q, 10), siglip.index.open(fresh).search(q, 10)
    assert np.array_equal(a[1], b[1])  # the same index as an uninterrupted build


def test_cli_tune_json_and_missing_faiss(pq_index, capsys, monkeypatch):
    path, _ = pq_index
    assert main(["index", str(path), "--tune", "--target-recall", "0.99", "--queries", "100", "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["target_recall"] == 0.99 and desc["recall"]["rows"]["recall@10"] >= 0.99
    assert main(["index", str(path), "--tune", "--nprobe", "1", "--queries", "50"]) == 0
    out = capsys.readouterr().out
    assert "nprobe 1," in out and "recall@10" in out and "median query" in out
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert main(["index", str(path)]) == 1
    assert "pip install 'siglip[ann]'" in capsys.readouterr().err


def test_captions_query_too_when_the_index_has_them(world, capsys):  # noqa: F811
    tmp, model_path = world
    pngs = sorted((tmp / "photos").rglob("*.png"))
    (tmp / "pairs.csv").write_text("image,caption\n" + "".join(f"{p},a photo number {i}\n" for i, p in enumerate(pngs)))
    embed(tmp / "pairs.csv", "--model", model_path, "--out", tmp / "idx")
    capsys.readouterr()
    assert main(["index", str(tmp / "idx"), "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["recall"]["captions"]["queries"] == len(pngs) and desc["recall"]["captions"]["recall@10"] == 1.0
    assert main(["index", str(tmp / "idx"), "--no-texts", "--json"]) == 0
    assert "captions" not in json.loads(capsys.readouterr().out)["recall"]
