"""The server's one door to siglip.index, in-process: --index flags opened and checked, search equal
to a brute-force product, and where each item's thumbnail comes from (a file, or its member of a
webdataset shard read by offset; a text item has none)."""

from __future__ import annotations

import io
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

from siglip.serve.images import thumbnail_jpeg  # noqa: E402
from siglip.serve.indexes import open_indexes, parse_index_flag  # noqa: E402

COLOURS = [(220, 30, 30), (30, 200, 40), (20, 40, 230), (240, 240, 20)]


@pytest.fixture(scope="module")
def indexes(tmp_path_factory, tokenizer):
    tmp = tmp_path_factory.mktemp("serve_indexes")
    torch.manual_seed(0)
    net = SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size))
    siglip.save_model(tmp / "m.pt", net, tokenizer, "bicubic")
    pngs = [write_image(tmp / "photos" / f"{i}.png", c, (20 + 10 * i, 16)) for i, c in enumerate(COLOURS)]
    members = {}
    for i, p in enumerate(pngs):
        members |= {f"k{i}.png": p.read_bytes(), f"k{i}.txt": f"photo {i}".encode()}
    write_tar(tmp / "shard-0.tar", members)
    (tmp / "texts.txt").write_text("a red square\na blue circle\n")
    common = ["--model", str(tmp / "m.pt"), "--workers", "0"]
    assert main(["embed", str(tmp / "photos"), "--out", str(tmp / "photos.index"), *common]) == 0
    assert main(["embed", str(tmp / "shard-{0..0}.tar"), "--out", str(tmp / "shards.index"), *common]) == 0
    assert main(["embed", "--texts", str(tmp / "texts.txt"), "--out", str(tmp / "texts.index"), *common]) == 0
    model = siglip.load(tmp / "m.pt")
    flags = [f"p={tmp / 'photos.index'}", f"s={tmp / 'shards.index'}", str(tmp / "texts.index")]
    return tmp, model, pngs, open_indexes(flags, model.fingerprint, str(tmp / "m.pt"))


def test_flags_name_the_indexes_and_refuse_mistakes(indexes, tmp_path):
    tmp, model, _, opened = indexes
    assert list(opened) == ["p", "s", "texts"]  # a bare PATH is named after its folder
    assert [opened[n].kind for n in opened] == ["image", "image", "text"] and opened["p"].count == 4
    assert parse_index_flag("a=b=c") == ("a", Path("b=c"))
    with pytest.raises(ValueError, match="given twice"):
        open_indexes([f"p={tmp / 'photos.index'}", f"p={tmp / 'texts.index'}"], model.fingerprint, "m")
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        open_indexes([f"x={tmp_path}"], model.fingerprint, "m")
    with pytest.raises(ValueError, match=r"--index p=.*fingerprint"):
        open_indexes([f"p={tmp / 'photos.index'}"], "0" * 16, "other.pt")


def test_search_equals_brute_force(indexes):
    tmp, model, _, opened = indexes
    q = model.embed_texts(["a blue circle"])
    cos, rows = opened["p"].search(q, 10)  # k over the count: all 4 rows
    meta_rows = np.load(tmp / "photos.index" / opened["p"].meta["embeddings"]).astype(np.float32)
    ref = torch.from_numpy(meta_rows) @ q[0]
    assert rows[0].tolist() == torch.argsort(ref, descending=True).tolist()
    torch.testing.assert_close(cos[0], ref.sort(descending=True).values, atol=1e-5, rtol=0)
    torch.testing.assert_close(opened["p"].vectors(rows[0].tolist()), torch.from_numpy(meta_rows[rows[0]]))


def test_thumbnails_come_from_the_items_own_file_or_shard_member(indexes):
    _, _, pngs, opened = indexes
    for row in range(4):
        path = opened["p"].image_source(row)
        assert path == pngs[row]
        member = opened["s"].image_source(row)
        item = opened["s"].items([row])[0]
        assert member == pngs[int(item["key"][1:])].read_bytes()  # the shard member's own bytes
        assert Image.open(io.BytesIO(thumbnail_jpeg(member))).size == Image.open(pngs[int(item["key"][1:])]).size
    assert opened["texts"].image_source(0) is None


def test_an_approximate_index_is_used_and_exact_can_be_asked(indexes, tmp_path):
    """`siglip index` beside the rows: the server opens it (ann described in /health), its hits are
    re-ranked exact cosines equal to the exact scan's, and `exact=True` scans."""
    pytest.importorskip("faiss")
    import shutil

    tmp, model, _, _ = indexes
    shutil.copytree(tmp / "photos.index", tmp_path / "photos.index")
    assert main(["index", str(tmp_path / "photos.index"), "--kind", "hnsw", "--queries", "4", "--json"]) == 0
    ix = open_indexes([f"p={tmp_path / 'photos.index'}"], model.fingerprint, "m")["p"]
    assert ix.ann is not None and ix.ann["kind"] == "hnsw"
    q = model.embed_texts(["a blue circle", "a red square"])
    approx, exact = ix.search(q, 3), ix.search(q, 3, exact=True)
    assert approx[1].tolist() == exact[1].tolist()
    torch.testing.assert_close(approx[0], exact[0], atol=1e-6, rtol=0)
