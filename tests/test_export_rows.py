"""The export schema read from an index (`siglip.export.rows`): every row once, in order, from any
start; paths and captions from each kind of item; the generation pinned for the whole read."""

import numpy as np
import pytest

from siglip.export.rows import iter_batches, open_rows
from tests.index_helpers import make_index, unit_rows


def test_batches_cover_every_row_in_order_from_any_start(tmp_path):
    rows = unit_rows(23, 8)
    items = [{"path": f"a/é{i}.jpg", "caption": f"caption {i}", "id": str(i)} for i in range(20)]
    items += [{"shard": "s-0.tar", "key": "k1", "id": "s-0.tar::k1"}, {"text": "a dog", "id": "t"}, {"id": "x"}]
    gen = open_rows(make_index(tmp_path / "idx", rows, items=items))
    batches = list(iter_batches(gen, batch_rows=5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    ids = np.concatenate([b.ids for b in batches])
    assert ids.dtype == np.int64 and ids.tolist() == list(range(23))
    emb = np.concatenate([b.embeddings for b in batches])
    assert emb.dtype == np.float32 and np.array_equal(emb, rows.astype(np.float16).astype(np.float32))
    paths = sum((b.paths for b in batches), [])
    captions = sum((b.captions for b in batches), [])
    assert paths[0] == "a/é0.jpg" and captions[19] == "caption 19"
    assert paths[20:] == ["s-0.tar::k1", "", ""] and captions[20:] == ["", "a dog", ""]
    for start in (0, 7, 22, 23):
        tail = list(iter_batches(gen, batch_rows=4, start=start))
        assert sum((b.paths for b in tail), []) == paths[start:]
        assert np.concatenate([b.ids for b in tail] or [np.zeros(0, np.int64)]).tolist() == list(range(start, 23))


def test_a_commit_during_the_read_changes_nothing(tmp_path):
    """The generation is held open: the next generation's files replacing these (names deleted) midway
    does not change what the read returns."""
    path = make_index(tmp_path / "idx", unit_rows(10, 4))
    gen = open_rows(path)
    it = iter_batches(gen, batch_rows=3)
    first = next(it)
    make_index(path, unit_rows(12, 4, seed=1), gen=2, items=[{"path": f"new{i}", "id": str(i)} for i in range(12)])
    for name in ("embeddings-1.npy", "items-1.jsonl", "items-1.offsets.npy"):
        (path / name).unlink()
    rest = list(it)
    assert first.paths[0] == "img0.jpg" and sum((b.paths for b in rest), []) == [f"img{i}.jpg" for i in range(3, 10)]


def test_a_damaged_items_file_is_named(tmp_path):
    path = make_index(tmp_path / "idx", unit_rows(4, 4))
    (path / "items-1.jsonl").write_text('{"path": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"items-1.jsonl: line 2 is not JSON"):
        list(iter_batches(open_rows(path), batch_rows=2))
    with pytest.raises(ValueError, match=r"start row 9"):
        next(iter_batches(open_rows(path), start=9))
