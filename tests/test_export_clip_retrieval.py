"""`siglip export --to clip-retrieval`: the folder clip-retrieval's OutputSink writes (names, padding,
float16 rows byte for byte as its np.save writes them, metadata row for row), built into an index by
the real autofaiss with the same top-10 as our exact search, and a kill -9 midway then a rerun giving
every row once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pytest

import siglip.index
from siglip.cli import main
from siglip.index.clip_folder import part_suffix
from tests.clip_helpers import output_sink
from tests.index_helpers import make_index, unit_rows

pq = pytest.importorskip("pyarrow.parquet")
REPO = Path(__file__).resolve().parents[1]


def _items(n: int) -> list[dict]:
    items = [{"path": f"photos/é{i}.jpg", "caption": f"caption {i}", "id": str(i)} for i in range(n)]
    items[3] = {"shard": "shards/s-0.tar", "key": "k3", "id": "shards/s-0.tar::k3"}
    items[4] = {"path": "photos/no-caption.jpg", "id": "x"}
    return items


def _export(index: Path, dest: Path, *flags: str) -> dict:
    """`siglip export INDEX --to clip-retrieval DEST FLAGS --json`, in process: its report."""
    buf = StringIO()
    with redirect_stdout(buf):
        assert main(["export", str(index), "--to", "clip-retrieval", str(dest), "--json", *flags]) == 0
    return json.loads(buf.getvalue())


def _read_folder(dest: Path, emb: str = "img_emb") -> tuple[np.ndarray, list[np.ndarray], object]:
    import pandas as pd

    npys = sorted((dest / emb).glob("*.npy"))
    parts = [np.load(p) for p in npys]
    meta = pd.concat([pd.read_parquet(dest / "metadata" / p.name.replace(emb, "metadata").replace(".npy", ".parquet"))
                      for p in npys], ignore_index=True)  # fmt: skip
    return np.concatenate(parts), parts, meta


def test_an_image_index_exported_in_parts_row_for_row(tmp_path):
    rows = unit_rows(25, 16)
    index = make_index(tmp_path / "idx", rows, items=_items(25))
    report = _export(index, tmp_path / "out", "--part-rows", "10", "--batch-rows", "4")  # batches cross parts
    assert report["rows"] == 25 and report["parts"] == 3 and report["parts_written"] == 3
    dest = tmp_path / "out"
    assert sorted(p.name for p in (dest / "img_emb").iterdir()) == ["img_emb_0.npy", "img_emb_1.npy", "img_emb_2.npy"]
    assert not (dest / "text_emb").exists()
    emb, parts, meta = _read_folder(dest)
    assert [len(p) for p in parts] == [10, 10, 5] and all(p.dtype == np.float16 for p in parts)
    assert np.array_equal(emb, rows.astype(np.float16))  # row order kept, no rounding beyond float16
    for part, npy in zip(parts, sorted((dest / "img_emb").glob("*.npy"))):  # what OutputSink's np.save writes
        saved = tmp_path / "np_save.npy"
        np.save(saved, part)
        assert npy.read_bytes() == saved.read_bytes()
    assert list(meta.columns) == ["image_path", "caption", "id"]
    assert meta["id"].tolist() == list(range(25)) and str(meta["id"].dtype) == "int64"
    assert meta["image_path"][0] == "photos/é0.jpg" and meta["caption"][24] == "caption 24"
    assert meta["image_path"][3] == "shards/s-0.tar::k3" and meta["caption"][3] == meta["caption"][4] == ""


def test_a_text_index_goes_to_text_emb_with_its_texts_as_captions(tmp_path):
    rows = unit_rows(7, 8, seed=2)
    texts = [{"text": f"text {i}", "id": f"line:{i}"} for i in range(7)]
    index = make_index(tmp_path / "idx", rows, items=texts, kind="text")
    report = _export(index, tmp_path / "out", "--part-rows", "3")
    dest = tmp_path / "out"
    assert report["embeddings"] == "text_emb/" and not (dest / "img_emb").exists()
    emb, parts, meta = _read_folder(dest, "text_emb")
    assert [len(p) for p in parts] == [3, 3, 1] and np.array_equal(emb, rows.astype(np.float16))
    assert list(meta.columns) == ["caption", "id"] and meta["caption"].tolist() == [f"text {i}" for i in range(7)]


def test_part_names_are_clip_retrievals(tmp_path):
    """Our names against OutputSink's own: the padding grows at 10, 100 parts (log10 + 1 digits)."""
    sink_class = output_sink()
    for count in (1, 2, 9, 10, 11, 100):
        for i in {0, count - 1}:
            sink = sink_class(str(tmp_path / f"{count}"), False, True, False, i, count)
            sink.add({"image_embs": np.zeros((1, 4), np.float16), "image_filename": ["a.jpg"]})
            sink.flush()
        names = sorted(p.name for p in (tmp_path / f"{count}" / "img_emb").iterdir())
        assert names == sorted({f"img_emb_{part_suffix(i, count)}.npy" for i in {0, count - 1}})
    index = make_index(tmp_path / "idx", unit_rows(23, 4))
    _export(index, tmp_path / "out", "--part-rows", "2")  # 12 parts: 00 .. 11
    assert sorted(p.name for p in (tmp_path / "out" / "img_emb").iterdir())[::11] == [
        "img_emb_00.npy",
        "img_emb_11.npy",
    ]


KILLER = """
import os, signal, sys
import siglip.export.clip_retrieval as cr
orig = cr.iter_batches
def killing(gen, batch_rows, start=0, **kw):
    for b in orig(gen, batch_rows, start, **kw):
        if int(b.ids[0]) >= int(os.environ["KILL_AT_ROW"]):
            os.kill(os.getpid(), signal.SIGKILL)  # between two batches of a part: its files half written
        yield b
cr.iter_batches = killing
from siglip.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_midway_then_rerun_every_row_once(tmp_path):
    rows = unit_rows(50, 8, seed=3)
    index = make_index(tmp_path / "idx", rows, items=_items(50))
    dest = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "KILL_AT_ROW": "27"}
    cmd = [sys.executable, "-c", KILLER, "export", str(index), "--to", "clip-retrieval", str(dest)]
    killed = subprocess.run([*cmd, "--part-rows", "10", "--batch-rows", "3", "--json"], env=env, capture_output=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    done = sorted(p.name for p in (dest / "img_emb").glob("img_emb_*.npy"))
    assert done[:2] == ["img_emb_0.npy", "img_emb_1.npy"] and "img_emb_2.npy" not in done  # part 2 was in flight
    assert list(dest.rglob(".img_emb_2.npy.*.tmp")), "the kill did not land inside a part's write"
    report = _export(index, dest, "--part-rows", "10", "--batch-rows", "3")
    assert (report["parts_kept"], report["parts_written"]) == (2, 3)
    emb, parts, meta = _read_folder(dest)
    assert np.array_equal(emb, rows.astype(np.float16)) and meta["id"].tolist() == list(range(50))
    assert not list(dest.rglob("*.tmp"))
    again = _export(index, dest, "--part-rows", "10")  # other flags: --part-rows only counts
    assert (again["parts_kept"], again["parts_written"]) == (5, 0)
    other = _export(index, dest, "--part-rows", "20")  # another export into the folder replaces the parts
    assert other["parts_written"] == 3 and len(list((dest / "img_emb").iterdir())) == 3


def test_a_folder_with_other_files_is_refused(tmp_path, capsys):
    index = make_index(tmp_path / "idx", unit_rows(4, 4))
    (tmp_path / "out" / "img_emb").mkdir(parents=True)
    (tmp_path / "out" / "img_emb" / "img_emb_0.npy").write_bytes(b"someone's")
    assert main(["export", str(index), "--to", "clip-retrieval", str(tmp_path / "out")]) == 1
    assert "out: not empty and not a siglip export (it holds" in capsys.readouterr().err
    assert (tmp_path / "out" / "img_emb" / "img_emb_0.npy").read_bytes() == b"someone's"
    import siglip.export.clip_retrieval as cr
    from siglip.export import Options

    with pytest.raises(ValueError, match="--part-rows must be at least 1"):
        cr.export(index, Options(str(tmp_path / "o2"), part_rows=0))
    (tmp_path / "a_file").write_text("x")  # a file as DEST: named, not an OSError traceback
    assert main(["export", str(index), "--to", "clip-retrieval", str(tmp_path / "a_file")]) == 1
    assert "a_file: a file, not a folder" in capsys.readouterr().err
    assert main(["export", str(index), "--to", "clip-retrieval", str(tmp_path / "a_file" / "out")]) == 1
    assert "siglip export: error: [Errno 20] Not a directory:" in capsys.readouterr().err  # any OSError: one line


def _autofaiss_top10(dest: Path, queries: np.ndarray, index_key: str | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """autofaiss.build_index on DEST/img_emb (its Python API: its CLI writes index_infos.json with
    json.dump, which fails under numpy 2 on a numpy float32 after the index is written)."""
    try:
        import autofaiss
    except ModuleNotFoundError:
        pytest.fail(
            "autofaiss is not installed: pip install --no-deps autofaiss embedding-reader fire (the Makefile's)"
        )
    index, infos = autofaiss.build_index(
        embeddings=str(dest / "img_emb"), index_key=index_key, metric_type="ip", save_on_disk=False,
        max_index_memory_usage="1G", current_memory_available="2G", verbose=40,
    )  # fmt: skip
    scores, ids = index.search(queries, 10)
    return scores, ids, infos


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("autofaiss")
    rows = unit_rows(3000, 32, seed=4)
    index = make_index(tmp / "idx", rows)
    _export(index, tmp / "out", "--part-rows", "700")  # 5 parts
    queries = unit_rows(20, 32, seed=5)
    ours = siglip.index.open(index).search(queries, 10, exact=True)
    return tmp / "out", queries, ours


def test_autofaiss_builds_the_export_with_our_exact_top10(exported):
    """The real autofaiss (flat inner-product index, the one that does not quantize) over the exported
    folder: the same top-10 ids as `siglip.index.open(...).search(exact=True)` for 20 queries."""
    dest, queries, (our_scores, our_ids) = exported
    scores, ids, infos = _autofaiss_top10(dest, queries, "Flat")
    assert infos["nb vectors"] == 3000 and infos["index_key"] == "Flat"
    assert np.array_equal(ids, our_ids)
    np.testing.assert_allclose(scores, our_scores, atol=1e-5)


@pytest.mark.slow
def test_autofaiss_own_choice_recall_against_ours(exported):
    """autofaiss choosing the index itself (HNSW at this size, tuned to its 10 ms default): its recall@10
    against our exact top-10, printed."""
    dest, queries, (_, our_ids) = exported
    _, ids, infos = _autofaiss_top10(dest, queries, None)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, our_ids)])
    print(f"autofaiss {infos['index_key']} ({infos['index_param']}): recall@10 {recall:.3f} against siglip --exact")
    assert recall >= 0.9


def test_float32_rows_are_written_float16(tmp_path):
    """An index stored in float32 (siglip embed --store-dtype float32) goes out as clip-retrieval's float16;
    the stored dtype is what `iter_batches(dtype=None)` hands over."""
    from siglip.export.rows import iter_batches, open_rows
    from siglip.index.store import atomic_npy, read_meta, write_meta

    rows = unit_rows(9, 8, seed=6)
    index = make_index(tmp_path / "idx", rows)
    atomic_npy(index / "embeddings-1.npy", rows)
    write_meta(index, {**read_meta(index), "dtype": "float32"})
    assert next(iter_batches(open_rows(index), 4, dtype=None)).embeddings.dtype == np.float32
    _export(index, tmp_path / "out", "--part-rows", "4")
    emb, parts, _ = _read_folder(tmp_path / "out")
    assert all(p.dtype == np.float16 for p in parts) and np.array_equal(emb, rows.astype(np.float16))
