"""Parquet and Arrow pair sources, with fixtures written by the libraries users write them with:
`datasets` (Image feature, to_parquet and save_to_disk) and pyarrow (a bytes column, a path column,
a list-of-captions column). Checked against the images and captions they were written from: every
row once per epoch over 2 ranks x 2 workers, exact resume, caption draws, bad rows skipped and
counted, hostile files (not parquet, truncated, wrong schema, a footer declaring 2 GiB) refused."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from siglip.data.parquet import TableError  # noqa: E402
from siglip.data.table_stream import TableStream, epoch_chunks, table_loader  # noqa: E402
from siglip.data.tables import find_tables, label_names  # noqa: E402
from tests.parquet_helpers import patch_footer  # noqa: E402

N = 23


def pixels(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, (6, 5, 3), dtype=np.uint8)


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels(i)).save(buf, format="PNG")
    return buf.getvalue()


def caption(i: int) -> str:
    return f"picture {i}"


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def caption_ids(captions: list[str]) -> torch.Tensor:
    return torch.tensor([int(c.split()[1]) for c in captions])


def stream(tables, batch=N, **kw) -> TableStream:
    return TableStream(tables, to_tensor, caption_ids, batch, **{"shuffle_buffer": 0, **kw})


def all_pairs(tables) -> dict[int, np.ndarray]:
    """caption number -> the pixels read, over one epoch taking every row in one batch."""
    out = {}
    for b in table_loader(stream(tables), 0, 0, 0):
        for ids, px in zip(b["ids"].tolist(), b["pixels"]):
            out[ids] = px.permute(1, 2, 0).numpy()
    return out


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    features = datasets.Features(
        {"image": datasets.Image(), "text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])}
    )
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(pixels(i)) for i in range(N)], "text": [caption(i) for i in range(N)],
         "label": [i % 2 for i in range(N)]},
        features=features,
    )  # fmt: skip
    ds.to_parquet(str(root / "hf.parquet"), batch_size=5)
    ds.save_to_disk(str(root / "disk"), max_shard_size="2KB")
    datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(str(root / "dict"))
    pq.write_table(pa.table({"data": [png(i) for i in range(N)], "caption": [caption(i) for i in range(N)]}),
                   root / "bytes.parquet", row_group_size=4)  # fmt: skip
    (root / "sub" / "imgs").mkdir(parents=True)
    for i in range(N):
        (root / "sub" / "imgs" / f"{i}.png").write_bytes(png(i))
    table = pa.table({"file_name": [f"imgs/{i}.png" for i in range(N)],
                      "captions": [[caption(i), f"photo {i}", ""] for i in range(N)]})  # fmt: skip
    pq.write_table(table, root / "sub" / "paths.parquet", row_group_size=6)
    return root


@pytest.mark.parametrize("name", ["hf.parquet", "disk", "dict", "bytes.parquet", "sub/paths.parquet"])
def test_each_layout_gives_the_pairs_it_was_written_with(src, name):
    tables = find_tables(str(src / name))
    assert tables.n_rows == N
    got = all_pairs(tables)
    assert sorted(got) == list(range(N))
    for i, px in got.items():
        np.testing.assert_array_equal(px, pixels(i))


def test_columns_detected_by_name_and_type(src):
    hf = find_tables(str(src / "hf.parquet"), label=True)
    assert (hf.image_column, hf.image_kind, hf.caption_column, hf.label_column) == ("image", "struct", "text", "label")
    assert label_names(hf) == ["a", "b"]
    assert label_names(find_tables(str(src / "disk"), label=True)) == ["a", "b"]
    raw = find_tables(str(src / "bytes.parquet"))
    assert (raw.image_column, raw.image_kind, len(raw.units)) == ("data", "bytes", 6)  # 23 rows in groups of 4
    paths = find_tables(str(src / "sub/paths.parquet"))
    assert (paths.image_column, paths.image_kind, paths.caption_column, paths.caption_list) == (
        "file_name", "path", "captions", True,
    )  # fmt: skip
    assert len(find_tables(str(src / "disk")).units) > 1  # max_shard_size: several .arrow files
    with pytest.raises(TableError, match="no caption column 'nope'"):
        find_tables(str(src / "hf.parquet"), caption_column="nope")


def test_folder_of_split_files_trains_on_train(src, tmp_path):
    for split in ("train", "test"):
        pq.write_table(
            pa.table({"data": [png(0)], "caption": [f"{split} 0"]}), tmp_path / f"{split}-00000-of-00001.parquet"
        )
    tables = find_tables(str(tmp_path))
    assert [os.path.basename(u.file) for u in tables.units] == ["train-00000-of-00001.parquet"]
    (tmp_path / "g").mkdir()
    for k in range(2):
        pq.write_table(pa.table({"data": [png(k)], "caption": [caption(k)]}), tmp_path / "g" / f"part-{k}.parquet")
    glob = find_tables(str(tmp_path / "g" / "part-*.parquet"))
    assert [os.path.basename(u.file) for u in glob.units] == ["part-0.parquet", "part-1.parquet"]
    with pytest.raises(TableError, match="hf.parquet: no column 'data'"):  # files of another schema: named
        find_tables(str(src / "*.parquet"))


def epoch(tables, ep: int, start=0, workers=0, world=1, batch=8, **kw) -> list[list[list[int]]]:
    """Per rank, the caption numbers of each batch of one epoch."""
    return [
        [
            b["ids"].tolist()
            for b in table_loader(stream(tables, batch, rank=r, world_size=world, **kw), ep, start, workers)
        ]
        for r in range(world)
    ]


def test_every_row_once_per_epoch_over_ranks_and_workers(src):
    tables = find_tables(str(src / "bytes.parquet"))  # 23 rows, 6 row groups; batch 8 -> 2 steps, 16 rows
    for workers in (0, 2):
        runs = epoch(tables, 3, workers=workers, world=2, shuffle_buffer=5)
        assert [len(r) for r in runs] == [2, 2] and all(len(b) == 4 for r in runs for b in r)
        rows = [i for r in runs for b in r for i in b]
        assert len(rows) == 16 == len(set(rows))
    one = epoch(tables, 3, workers=0, world=2, shuffle_buffer=5)
    two = epoch(tables, 3, workers=2, world=2, shuffle_buffer=5)
    as_sets = lambda runs: sorted(sorted(b) for r in runs for b in r)
    assert as_sets(one) == as_sets(two)  # the batches do not depend on the worker count
    assert epoch(tables, 4, world=2) != one  # another epoch, another order


def test_the_rows_left_out_change_each_epoch_even_in_one_row_group():
    """A file written as one row group (pandas' and pyarrow's default up to 1Mi rows): 100 rows, batch 16,
    so 4 rows fill no batch each epoch. They were the file's last 4 in every epoch (never trained on);
    now a seeded split of its first and last rows, so each row is trained on in some epochs. Every
    rank's range stays whole batches of distinct rows."""
    seen, left_out = set(), []
    for ep in range(30):  # the demo's epochs
        chunks = [c for r in range(2) for c in epoch_chunks([100], 0, ep, 16, r, 2, chunk_rows=30)]
        rows = [i for c in chunks for _u, lo, hi in c.segments for i in range(lo, hi)]
        assert len(rows) == len(set(rows)) == 96 and sum(c.batches for c in chunks) * 8 == 96
        seen |= set(rows)
        left_out.append(sorted(set(range(100)) - set(rows)))
    assert seen == set(range(100)) and len({tuple(x) for x in left_out}) > 2


def test_resume_mid_epoch_gives_the_rest_of_the_epoch(src):
    tables = find_tables(str(src / "bytes.parquet"))
    for workers in (0, 2):
        full = epoch(tables, 1, workers=workers, batch=2, shuffle_buffer=3)[0]
        assert len(full) == 11
        for start in (1, 4, 7):
            assert epoch(tables, 1, start, workers=workers, batch=2, shuffle_buffer=3)[0] == full[start:]


def test_caption_lists_draw_one_per_epoch_reproducibly(src):
    tables = find_tables(str(src / "sub/paths.parquet"))
    draws = {}
    for ep in (0, 1):
        s = stream(tables, seed=7)
        draws[ep] = {c for b in table_loader(s, ep, 0, 0) for c in b["captions"]}
        again = {c for b in table_loader(stream(tables, seed=7), ep, 0, 0) for c in b["captions"]}
        assert draws[ep] == again
        assert all(c.split()[0] in ("picture", "photo") for c in draws[ep])  # never the empty one
    assert draws[0] != draws[1] and len(draws[0] | draws[1]) > N


def test_bad_rows_are_skipped_counted_and_named(tmp_path, caplog):
    images = [{"bytes": png(i), "path": None} for i in range(8)]
    images[1] = {"bytes": b"\x89PNG garbage", "path": None}  # undecodable
    images[5] = None  # a null image
    images[6] = {"bytes": None, "path": "missing.png"}  # a path to nothing
    captions = [caption(i) for i in range(8)]
    captions[2], captions[3] = None, "   "
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"image": images, "caption": captions}), path, row_group_size=3)
    with caplog.at_level(logging.WARNING):
        batches = list(table_loader(stream(find_tables(str(path)), 8), 0, 0, 0))
    assert sum(b["skipped"] for b in batches) == 5
    assert sorted(i for b in batches for i in b["ids"].tolist()) == [0, 4, 7]
    assert f"{path} row 3 " in caplog.text and f"{path} row 6 " in caplog.text


def test_hostile_files_get_a_clear_error(src, tmp_path):
    fake = tmp_path / "fake.parquet"
    fake.write_text("image,caption\na.png,hello\n")
    with pytest.raises(TableError, match="fake.parquet: not a readable parquet file"):
        find_tables(str(fake))
    cut = tmp_path / "cut.parquet"
    cut.write_bytes((src / "bytes.parquet").read_bytes()[:-100])
    with pytest.raises(TableError, match="cut.parquet: not a readable parquet file"):
        find_tables(str(cut))
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"x": [1, 2], "y": [0.5, 1.5]}), numbers)
    with pytest.raises(TableError, match="numbers.parquet: cannot find the image column"):
        find_tables(str(numbers))


def test_a_footer_declaring_huge_row_groups_is_refused_before_reading(src, tmp_path):
    """The footer (Thrift) is rewritten to declare 2 GiB uncompressed, then 10^12 rows, in a 2 kB
    file: refused from the metadata, nothing allocated."""
    big = tmp_path / "big.parquet"
    big.write_bytes((src / "bytes.parquet").read_bytes())
    patch_footer(big, {(4, 0, 1, 0, 3, 6): 2 << 30, (4, 0, 2): 2 << 30})
    with pytest.raises(TableError, match=r"big.parquet: row group 0 declares 2.0 GiB"):
        find_tables(str(big))
    rows = tmp_path / "rows.parquet"
    rows.write_bytes((src / "bytes.parquet").read_bytes())
    patch_footer(rows, {(4, 1, 3): 10**12, (3,): 10**12})
    with pytest.raises(TableError, match=r"rows.parquet: row group 1 declares 1000000000000 rows"):
        find_tables(str(rows))


def test_garbage_pages_behind_a_good_footer_skip_rows_not_hang(src, tmp_path):
    data = bytearray((src / "bytes.parquet").read_bytes())
    data[4:400] = os.urandom(396)  # the first row groups' pages, footer intact
    bad = tmp_path / "pages.parquet"
    bad.write_bytes(bytes(data))
    tables = find_tables(str(bad))
    batches = list(table_loader(stream(tables, N), 0, 0, 0))
    got = [i for b in batches for i in b["ids"].tolist()] if batches[0]["ids"] is not None else []
    assert sum(b["skipped"] for b in batches) + len(got) == N and sum(b["skipped"] for b in batches) > 0


def test_resume_on_another_world_size_says_what_changes_for_tables():
    from siglip.train.resume import world_size_note

    assert "parquet/Arrow rows are dealt to ranks anew" in world_size_note(2, 1, False, tables=True)
    assert "manifest data" in world_size_note(2, 1, False)
