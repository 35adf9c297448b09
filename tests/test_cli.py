"""The `siglip` command on a tiny random model: embed (folder, corrupt file, resume, incremental,
manifest, shards, texts), search (against brute force, fingerprint check, --json, --html), classify,
score, the help texts, and 2 torchrun processes building the same index as one."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import siglip
import siglip.index.build as build
from siglip.cli import COMMANDS, main
from siglip.config import ModelConfig
from siglip.index import read_items, read_meta, topk_file, topk_rows
from siglip.model import SigLIP
from tests.conftest import REPO, write_image, write_tar

COLOURS = [(220, 30, 30), (30, 200, 40), (20, 40, 230), (240, 240, 20), (20, 220, 220), (200, 20, 200)]


def save_tiny(path, tokenizer, seed=0):
    torch.manual_seed(seed)
    net = SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size))
    siglip.save_model(path, net, tokenizer, "bicubic")
    return path


@pytest.fixture
def world(tmp_path, tokenizer):
    """A model file and a folder of 12 images in two sub-folders plus one corrupt file."""
    model = save_tiny(tmp_path / "m.pt", tokenizer)
    for i in range(12):
        write_image(tmp_path / "photos" / f"s{i % 2}" / f"{i:02d}.png", COLOURS[i % 6], (16 + i, 14 + i % 3))
    (tmp_path / "photos" / "s1" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return tmp_path, str(model)


def embed(*args):
    assert main(["embed", *map(str, args), "--workers", "0", "--batch-size", "4"]) == 0


def rows_by_path(index):
    meta = read_meta(index)
    z = np.load(index / meta["embeddings"])
    items = read_items(index, meta, list(range(meta["count"])))
    return {it.get("path", it.get("text")): row for it, row in zip(items, z)}, meta


def test_embed_folder_skips_a_corrupt_image_and_matches_the_api(world):
    tmp, model_path = world
    embed(tmp / "photos", "--model", model_path, "--out", tmp / "idx")
    rows, meta = rows_by_path(tmp / "idx")
    assert meta["count"] == 12 and meta["dim"] == 64 and meta["dtype"] == "float16" and meta["kind"] == "image"
    assert [s["path"] for s in meta["skipped"]] == [str(tmp / "photos" / "s1" / "broken.jpg")]
    assert meta["skipped"][0]["reason"]
    model = siglip.load(model_path)
    assert meta["fingerprint"] == model.fingerprint
    paths = sorted(rows)
    assert paths == sorted(str(p) for p in (tmp / "photos").rglob("*.png"))
    want = model.embed_images(paths).numpy()
    np.testing.assert_allclose(np.stack([rows[p] for p in paths]).astype(np.float32), want, atol=1e-3)


def test_resume_after_interruption_and_incremental_runs(world, monkeypatch):
    tmp, model_path = world
    fresh = tmp / "fresh"
    embed(tmp / "photos", "--model", model_path, "--out", fresh, "--unit-size", "3")
    calls, real = [], build.write_part

    def dies_after_two(*a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        real(*a, **k)

    monkeypatch.setattr(build, "write_part", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        embed(tmp / "photos", "--model", model_path, "--out", tmp / "idx", "--unit-size", "3")
    assert read_meta(tmp / "idx") is None and len(list((tmp / "idx" / "parts").glob("*.json"))) == 2
    monkeypatch.setattr(build, "write_part", real)
    written = []
    monkeypatch.setattr(build, "write_part", lambda idx, keys, *a: written.append(keys) or real(idx, keys, *a))
    embed(tmp / "photos", "--model", model_path, "--out", tmp / "idx", "--unit-size", "3")
    assert sum(map(len, written)) == 12 - 6  # the two committed parts (6 images) are not redone
    a, b = np.load(tmp / "idx" / read_meta(tmp / "idx")["embeddings"]), np.load(fresh / read_meta(fresh)["embeddings"])
    assert np.array_equal(a, b)  # the same index as one uninterrupted run, row for row
    assert (tmp / "idx" / read_meta(tmp / "idx")["items"]).read_text() == (
        fresh / read_meta(fresh)["items"]
    ).read_text()
    # the folder grows: only the new files are embedded; the rows equal a fresh run's
    for i in range(12, 15):
        write_image(tmp / "photos" / "s0" / f"{i:02d}.png", COLOURS[i % 6], (30, 20))
    written.clear()
    embed(tmp / "photos", "--model", model_path, "--out", tmp / "idx")
    assert sorted(os.path.basename(k) for keys in written for k in keys) == ["12.png", "13.png", "14.png"]
    embed(tmp / "photos", "--model", model_path, "--out", tmp / "fresh2")
    grown, meta = rows_by_path(tmp / "idx")
    ref, _ = rows_by_path(tmp / "fresh2")
    assert grown.keys() == ref.keys() and meta["count"] == 15 and len(meta["skipped"]) == 1
    assert all(np.array_equal(grown[p], ref[p]) for p in ref)
    assert not (tmp / "idx" / "parts").exists() or not list((tmp / "idx" / "parts").iterdir())
    written.clear()
    embed(tmp / "photos", "--model", model_path, "--out", tmp / "idx")  # nothing new: nothing rewritten
    assert not written and read_meta(tmp / "idx")["generation"] == meta["generation"]


def test_topk_is_exact_against_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1000, 32)).astype(np.float32)
    z[500:540] = z[3] + 1e-3 * rng.standard_normal((40, 32))  # 40 near-duplicates: float16 near-ties
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    rows = z.astype(np.float16)
    np.save(tmp_path / "rows.npy", rows)
    q = torch.from_numpy(np.concatenate([z[3:4], rng.standard_normal((2, 32)).astype(np.float32)]))
    q = q / q.norm(dim=1, keepdim=True)
    full = torch.from_numpy(rows.astype(np.float32)) @ q.T  # (n, 3): the plain full matmul
    ref = full.T.topk(25, dim=1)
    for got in (topk_file(tmp_path / "rows.npy", q, 25, chunk_rows=97), topk_rows(rows, q, 25, chunk_rows=128)):
        torch.testing.assert_close(got[0], ref.values, atol=1e-6, rtol=0)  # chunked vs one matmul: rounding only
        found = full.T.gather(1, got[1])  # the full matmul's scores of the rows found: the top k
        torch.testing.assert_close(found, ref.values, atol=1e-6, rtol=0)


def test_search_json_html_and_a_different_model_is_refused(world, tokenizer, capsys):
    tmp, model_path = world
    embed(tmp / "photos", "--model", model_path, "--out", tmp / "idx")
    capsys.readouterr()
    assert main(["search", str(tmp / "idx"), "a red square", "-k", "5", "--json", "--html", str(tmp / "r.html")]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    model = siglip.load(model_path)
    meta = read_meta(tmp / "idx")
    z = torch.from_numpy(np.load(tmp / "idx" / meta["embeddings"]).astype(np.float32))
    cos = z @ model.embed_texts(["a red square"])[0]
    want = cos.topk(5)
    items = read_items(tmp / "idx", meta, want.indices.tolist())
    assert [r["path"] for r in results] == [it["path"] for it in items]
    t, b = model.model.t.item(), model.model.b.item()
    for r, c in zip(results, want.values):
        assert r["logit"] == pytest.approx(t * float(c) + b, abs=1e-5)
        assert r["score"] == pytest.approx(1 / (1 + np.exp(-r["logit"])), abs=1e-6)
    assert (tmp / "r.html").read_text().count("data:image/jpeg;base64,") == 5
    assert main(["search", str(tmp / "idx"), "--image", results[0]["path"], "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["cosine"] == pytest.approx(1.0, abs=2e-3)  # itself
    other = save_tiny(tmp / "other.pt", tokenizer, seed=1)
    assert main(["search", str(tmp / "idx"), "a red square", "--model", str(other)]) == 1
    assert "fingerprint" in capsys.readouterr().err
    assert main(["embed", str(tmp / "photos"), "--model", str(other), "--out", str(tmp / "idx"), "--workers", "0"]) == 1
    assert "different models are not comparable" in capsys.readouterr().err


def test_manifest_shards_and_texts(world, capsys):
    tmp, model_path = world
    pngs = sorted((tmp / "photos").rglob("*.png"))[:4]
    (tmp / "pairs.csv").write_text("image,caption\n" + "".join(f"{p},photo {i}\n" for i, p in enumerate(pngs)))
    members = {}
    for i, p in enumerate(pngs):
        members |= {f"{i:04d}.png": p.read_bytes(), f"{i:04d}.txt": f"photo {i}".encode()}
    write_tar(tmp / "shard-0.tar", members)
    (tmp / "texts.txt").write_text("a red square\n\na blue circle\n")
    embed(tmp / "pairs.csv", "--model", model_path, "--out", tmp / "m_idx")
    embed(tmp / "shard-{0..0}.tar", "--model", model_path, "--out", tmp / "s_idx")
    embed("--texts", tmp / "texts.txt", "--model", model_path, "--out", tmp / "t_idx")
    m, s = read_meta(tmp / "m_idx"), read_meta(tmp / "s_idx")
    zm, zs = np.load(tmp / "m_idx" / m["embeddings"]), np.load(tmp / "s_idx" / s["embeddings"])
    assert np.array_equal(zm, zs)  # the same images, from files or from a tar by offset
    assert [it["caption"] for it in read_items(tmp / "s_idx", s, [0, 1, 2, 3])] == [f"photo {i}" for i in range(4)]
    assert [it["caption"] for it in read_items(tmp / "m_idx", m, [3])] == ["photo 3"]
    texts, meta = rows_by_path(tmp / "t_idx")
    assert meta["kind"] == "text" and list(texts) == ["a red square", "a blue circle"]
    want = siglip.load(model_path).embed_texts(["a blue circle"])[0].numpy()
    np.testing.assert_allclose(texts["a blue circle"].astype(np.float32), want, atol=1e-3)


def test_classify_and_score_commands(world, capsys, tmp_path):
    tmp, model_path = world
    model = siglip.load(model_path)
    pngs = [str(p) for p in sorted((tmp / "photos").rglob("*.png"))]
    labels = ["red square", "green square", "blue square"]
    assert main(["classify", str(tmp / "photos"), "--model", model_path, "--labels", ",".join(labels),
                 "--json", "--workers", "0", "--csv", str(tmp / "c.csv")]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in out] == pngs  # the corrupt file skipped
    probs = model.classify(pngs, labels)
    for r, p in zip(out, probs):
        assert [r["probs"][label] for label in labels] == pytest.approx(p.tolist(), abs=1e-5)
        assert r["top"] == labels[int(p.argmax())]
    assert (tmp / "c.csv").read_text().splitlines()[0] == "path,top," + ",".join(labels)
    assert main(["score", "--model", model_path, "--image", pngs[0], "--text", "a red square",
                 "--image", pngs[1], "--text", "a blue circle", "--json"]) == 0  # fmt: skip
    scores = [r["score"] for r in json.loads(capsys.readouterr().out)]
    assert scores == pytest.approx(
        model.score(pngs[:2], ["a red square", "a blue circle"], pairs=True).tolist(), abs=1e-6
    )
    assert main(["score", "--model", model_path, "--image", pngs[0]]) == 1
    assert "in pairs" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help_with_an_example(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert f"siglip {name} " in capsys.readouterr().out


def test_python_dash_m_siglip_and_unknown_command():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "siglip", "serch"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "did you mean 'search'" in r.stderr


@pytest.mark.slow
def test_torchrun_two_processes_build_the_same_index(world):
    tmp, model_path = world
    embed(tmp / "photos", "--model", model_path, "--out", tmp / "one", "--unit-size", "2")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "siglip",
           "embed", str(tmp / "photos"), "--model", model_path, "--out", str(tmp / "two"), "--unit-size", "2",
           "--workers", "0", "--batch-size", "4", "--device", "cpu"]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    one, two = read_meta(tmp / "one"), read_meta(tmp / "two")
    assert two["count"] == one["count"] == 12 and two["skipped"] == one["skipped"]
    assert np.array_equal(np.load(tmp / "two" / two["embeddings"]), np.load(tmp / "one" / one["embeddings"]))
    assert (tmp / "two" / two["items"]).read_text() == (tmp / "one" / one["items"]).read_text()
