"""clip-retrieval folders taken where an index is: a folder written by clip-retrieval's own OutputSink
(several partitions, zero-padded names) searched by `siglip search`, `siglip index` and the server's
index door with the results of numpy on its rows; our own export read back; bad folders named."""

from __future__ import annotations

import json
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch

import siglip
from siglip.cli import main
from siglip.config import ModelConfig
from siglip.index.clip_import import resolve
from siglip.index.store import read_meta
from siglip.model import SigLIP
from tests.clip_helpers import unit16, write_clip_folder
from tests.index_helpers import make_index, unit_rows

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
QUERY = "a red square on white"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    """A tiny model, and a folder written by OutputSink: partitions 0..2 of 12 (names _00 .. _02)."""
    tmp = tmp_path_factory.mktemp("clip_folder")
    torch.manual_seed(0)
    net = SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size))
    siglip.save_model(tmp / "m.pt", net, tokenizer, "bicubic")
    model = siglip.load(tmp / "m.pt")
    folder = write_clip_folder(tmp / "emb", [40, 25, 35], model.dim, partitions=12)
    return tmp, model, folder


def _search(path: Path, model_path: Path, *flags: str) -> list[dict]:
    buf = StringIO()
    with redirect_stdout(buf):
        assert main(["search", str(path), QUERY, "--model", str(model_path), "--json", "-k", "10", *flags]) == 0
    return json.loads(buf.getvalue())


def _numpy_top10(rows: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cos = rows.astype(np.float32) @ q
    top = np.argsort(-cos, kind="stable")[:10]
    return top, cos[top]


def test_a_folder_clip_retrieval_wrote_is_searched_as_numpy_would(world):
    tmp, model, wrote = world
    assert sorted(p.name for p in (tmp / "emb" / "img_emb").iterdir())[0] == "img_emb_00.npy"
    q = model.embed_texts([QUERY])[0].numpy()
    for path, rows, labels in [(tmp / "emb", wrote["img"], wrote["paths"]),
                               (tmp / "emb" / "text_emb", wrote["text"], wrote["captions"])]:  # fmt: skip
        results = _search(path, tmp / "m.pt", "--exact")
        top, cos = _numpy_top10(rows, q)
        assert [r["path"] for r in results] == [labels[i] for i in top]
        np.testing.assert_allclose([r["cosine"] for r in results], cos, atol=1e-5)
    meta = read_meta(tmp / "emb" / "siglip-img_emb.index")
    assert (meta["count"], meta["dim"], meta["dtype"], meta["kind"]) == (100, model.dim, "float16", "image")
    rows = np.load(tmp / "emb" / "siglip-img_emb.index" / meta["embeddings"])
    assert np.array_equal(rows, wrote["img"])  # copied bit for bit, in partition order
    item = siglip.index.open(tmp / "emb" / "siglip-img_emb.index").item(41)
    assert item == {"path": wrote["paths"][41], "caption": "caption 41", "id": "metadata_01.parquet::1"}
    _search(tmp / "emb", tmp / "m.pt")
    assert read_meta(tmp / "emb" / "siglip-img_emb.index")["generation"] == 1  # imported once


def test_siglip_index_and_the_server_take_the_folder(world, tmp_path, capsys):
    pytest.importorskip("faiss")
    tmp, model, wrote = world
    top, cos = _numpy_top10(wrote["img"], model.embed_texts([QUERY])[0].numpy())
    with redirect_stdout(StringIO()):
        assert main(["index", str(tmp / "emb"), "--json", "--queries", "20"]) == 0
    ann_json = tmp / "emb" / "siglip-img_emb.index" / "ann.json"
    assert list(json.loads(ann_json.read_text())["recall"]) == ["rows"]  # the folder names no model for captions
    write_clip_folder(tmp_path / "d12", [30], 12)
    assert main(["index", str(tmp_path / "d12"), "--queries", "20", "--model", str(tmp / "m.pt")]) == 1
    assert f"its rows have dim 12, --model {tmp / 'm.pt'} embeds dim {model.dim}" in capsys.readouterr().err
    assert not [
        p.name for p in (tmp_path / "d12" / "siglip-img_emb.index").iterdir() if "ann" in p.name
    ]  # before a build
    with redirect_stdout(StringIO()):
        assert main(["index", str(tmp / "emb"), "--json", "--queries", "20", "--model", str(tmp / "m.pt")]) == 0
    assert json.loads(ann_json.read_text())["recall"]["captions"]["queries"] == 20  # its captions, as queries
    results = _search(tmp / "emb", tmp / "m.pt")  # through the approximate index, re-ranked exactly
    assert [r["path"] for r in results] == [wrote["paths"][i] for i in top]
    pytest.importorskip("fastapi")
    from siglip.serve.indexes import open_indexes

    served = open_indexes([f"c={tmp / 'emb'}"], model.fingerprint, "m.pt", model.dim)["c"]
    scores, rows = served.search(model.embed_texts([QUERY]), 10)
    assert rows[0].tolist() == top.tolist() and served.ann is not None
    np.testing.assert_allclose(scores[0].numpy(), cos, atol=1e-5)
    with pytest.raises(ValueError, match=r"emb: its rows have dim \d+, --model other.pt embeds dim 7"):
        open_indexes([f"c={tmp / 'emb'}"], model.fingerprint, "other.pt", 7)


def test_a_query_model_of_another_dim_or_none_is_refused(world, capsys):
    tmp, _, _ = world
    assert main(["search", str(tmp / "emb"), QUERY]) == 1
    assert "emb: a clip-retrieval folder names no model; give --model" in capsys.readouterr().err
    other = tmp / "other"
    write_clip_folder(other, [5], 12)
    assert main(["search", str(other), QUERY, "--model", str(tmp / "m.pt")]) == 1
    err = capsys.readouterr().err
    assert f"{other.resolve()}: its rows have dim 12, --model {tmp / 'm.pt'} embeds dim" in err


def test_our_export_read_back_whole(tmp_path):
    """export -> folder -> index: the same rows, paths, shard members and captions, row for row."""
    rows = unit_rows(30, 8, seed=1)
    items = [{"path": f"p/{i}.jpg", "caption": f"c {i}", "id": str(i)} for i in range(30)]
    items[5] = {"shard": "s/a-0.tar", "key": "k5", "id": "s/a-0.tar::k5"}
    index = make_index(tmp_path / "idx", rows, items=items)
    with redirect_stdout(StringIO()):
        assert main(["export", str(index), "--to", "clip-retrieval", str(tmp_path / "out"), "--part-rows", "7"]) == 0
    back = siglip.index.open(resolve(tmp_path / "out"))
    assert back.count == 30 and np.array_equal(np.asarray(back.rows), rows.astype(np.float16))
    got = [{k: v for k, v in back.item(r).items() if k != "id"} for r in range(30)]
    assert got == [{k: v for k, v in it.items() if k != "id"} for it in items]
    with redirect_stdout(StringIO()):  # the index beside the parts does not stop a later export
        assert main(["export", str(index), "--to", "clip-retrieval", str(tmp_path / "out"), "--part-rows", "9"]) == 0
    assert siglip.index.open(resolve(tmp_path / "out")).meta["generation"] == 2  # the parts changed: imported again


def test_new_parts_are_imported_and_odd_rows_normalised(tmp_path, monkeypatch):
    folder = tmp_path / "emb"
    write_clip_folder(folder, [6, 4], 8, partitions=3)
    assert read_meta(resolve(folder))["count"] == 10
    with monkeypatch.context() as m:  # up to date: known from names and stat, no part opened
        m.setattr("siglip.index.clip_import.scan", lambda *a: pytest.fail("scanned an up-to-date folder"))
        assert read_meta(resolve(folder))["generation"] == 1
    np.save(folder / "img_emb" / "img_emb_2.npy", np.full((3, 8), 2.0, np.float16))  # not unit length
    pq.write_table(pa.table({"image_path": ["a", "b", "c"]}), folder / "metadata" / "metadata_2.parquet")
    meta = read_meta(resolve(folder))
    assert (meta["count"], meta["generation"], meta["origin"]["normalised"]) == (13, 2, 3)
    rows = np.load(resolve(folder) / meta["embeddings"])
    np.testing.assert_allclose(rows[10:].astype(np.float32), np.full((3, 8), 8**-0.5), atol=1e-3)
    assert not (resolve(folder) / "embeddings-1.npy").exists()  # the replaced generation's files go


def _broken(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    write_clip_folder(folder, [4, 5], 8, seed=2)
    return folder


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing", r"metadata_1\.parquet: missing \(the metadata of .*img_emb_1\.npy\)"),
        ("no_column", r"metadata_0\.parquet: no 'image_path' column \(it has caption\)"),
        ("rows", r"metadata_1\.parquet: 4 rows, but .*img_emb_1\.npy has 5"),
        ("stray", r"img_emb/extra\.npy: not a part of a clip-retrieval folder"),
        ("orphan", r"metadata_7\.parquet: a metadata part without img_emb/img_emb_7\.npy"),
        ("dims", r"img_emb_1\.npy: rows of dim 6, but .*img_emb_0\.npy has dim 8"),
        ("text_caption", r"metadata_0\.parquet: no 'caption' column"),
    ],
)
def test_bad_folders_are_named(tmp_path, case, match):
    folder = _broken(tmp_path, case)
    meta_dir, img = folder / "metadata", folder / "img_emb"
    target = folder
    if case == "missing":
        (meta_dir / "metadata_1.parquet").unlink()
    elif case in ("no_column", "text_caption"):
        pq.write_table(pa.table({"image_path" if case == "text_caption" else "caption": list("abcd")}),
                       meta_dir / "metadata_0.parquet")  # fmt: skip
        target = folder / "text_emb" if case == "text_caption" else folder
    elif case == "rows":
        pq.write_table(pa.table({"image_path": list("abcd")}), meta_dir / "metadata_1.parquet")
    elif case == "stray":
        np.save(img / "extra.npy", unit16(np.ones((2, 8))))
    elif case == "orphan":
        pq.write_table(pa.table({"image_path": list("ab")}), meta_dir / "metadata_7.parquet")
    elif case == "dims":
        np.save(img / "img_emb_1.npy", unit16(np.ones((5, 6))))
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        resolve(target)
    assert not (folder / "siglip-img_emb.index" / "meta.json").exists()
