"""The tar-shard reader: brace patterns, every sample exactly once per epoch across 2 ranks x 2
workers, captions from .txt or .json, corrupt samples skipped and counted, exact resume, resampling."""

import io
import itertools
import json
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from siglip.data.webdataset import TarStream, count_samples, expand_braces, is_shard_pattern, read_captions, shard_list

FORMATS = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]


def image_bytes(i: int, fmt: str) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards(root, n_shards=5, per_shard=7, corrupt=True):
    """Good samples KEY.{jpg,png,webp} + KEY.txt or KEY.json; per shard one corrupt image and one
    image without caption. Returns (pattern, good keys, bad count)."""
    good, bad = [], 0
    for s in range(n_shards):
        with tarfile.open(root / f"shard-{s:03d}.tar", "w") as tar:
            for j in range(per_shard):
                key = f"{s:03d}{j:04d}"
                ext, fmt = FORMATS[j % 3]
                add(tar, f"{key}.{ext}", image_bytes(s * 100 + j, fmt))
                if j % 2:
                    add(tar, f"{key}.json", json.dumps({"caption": f"a photo {key}", "width": 10}).encode())
                else:
                    add(tar, f"{key}.txt", f"a photo {key}".encode())
                good.append(key)
            if corrupt:
                add(tar, f"{s:03d}bad.jpg", b"\xff\xd8 not a jpeg")
                add(tar, f"{s:03d}bad.txt", b"broken")
                add(tar, f"{s:03d}nocap.png", image_bytes(s, "PNG"))
                bad += 2
    return str(root / "shard-{000..004}.tar"), good, bad


def to_tensor(img):
    return torch.from_numpy(np.asarray(img.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)


def stream(pattern, rank=0, world=1, **kw):
    kw.setdefault("batch_size", 3)
    return TarStream(shard_list(pattern), to_tensor, None, rank=rank, world_size=world, **kw)


def test_braces():
    assert expand_braces("d/{08..11}.tar") == ["d/08.tar", "d/09.tar", "d/10.tar", "d/11.tar"]
    assert expand_braces("{a,b}/{0..1}.tar") == ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]
    assert is_shard_pattern("/x/{000..009}.tar") and is_shard_pattern("one.tar") and not is_shard_pattern("a.csv")
    with pytest.raises(FileNotFoundError, match="5 of 5 shards missing"):
        shard_list("/nonexistent/{0..4}.tar")


def test_each_sample_once_per_epoch_across_ranks_and_workers(tmp_path):
    pattern, good, bad = make_shards(tmp_path)
    keys, skipped, captions = Counter(), 0, {}
    for rank in range(2):
        ds = stream(pattern, rank, 2, shuffle_buffer=4, seed=3)
        ds.set_epoch(1)
        for batch in DataLoader(ds, batch_size=None, num_workers=2):
            skipped += batch["skipped"]
            keys.update(batch["keys"])
            if batch["pixels"] is not None:
                assert batch["pixels"].shape[1:] == (3, 8, 8)
                captions.update(zip(batch["keys"], batch["captions"]))
    assert sorted(keys) == sorted(good) and set(keys.values()) == {1}
    assert skipped == bad
    assert all(captions[k] == f"a photo {k}" for k in good)  # .txt and .json captions
    assert count_samples(shard_list(pattern)) == len(good) + bad
    assert len(read_captions(shard_list(pattern), 4)) == 4


def test_shuffle_changes_with_epoch_not_with_rerun(tmp_path):
    pattern, good, _ = make_shards(tmp_path)

    def order(epoch):
        ds = stream(pattern, shuffle_buffer=5, seed=0)
        ds.set_epoch(epoch)
        return [k for b in ds for k in b["keys"]]

    assert order(0) == order(0) and order(0) != order(1) and sorted(order(1)) == sorted(good)


def test_resume_skips_to_the_same_batches(tmp_path):
    # exact without corrupt samples; skipping does not decode, so a corrupt one in the skipped part
    # shifts the stream by one sample
    pattern, _, _ = make_shards(tmp_path, corrupt=False)
    ds = stream(pattern, shuffle_buffer=5, repeat=True)
    full = [b["keys"] for b in itertools.islice(DataLoader(ds, batch_size=None, num_workers=2), 9)]
    ds.set_epoch(0, start=4)
    rest = [b["keys"] for b in itertools.islice(DataLoader(ds, batch_size=None, num_workers=2), 5)]
    assert rest == full[4:]


def test_resampled_is_endless_and_from_the_shards(tmp_path):
    pattern, good, _ = make_shards(tmp_path)
    ds = stream(pattern, rank=1, world=2, resampled=True, batch_size=4)
    batches = list(itertools.islice(iter(ds), 20))  # 80 samples > the 35 there are
    assert all(len(b["keys"]) == 4 for b in batches)
    assert {k for b in batches for k in b["keys"]} <= set(good)


def test_truncated_shard_counts_and_continues(tmp_path):
    pattern, good, _ = make_shards(tmp_path)
    path = tmp_path / "shard-002.tar"
    path.write_bytes(path.read_bytes()[:3000])
    ds = stream(pattern, shuffle_buffer=0)
    batches = list(ds)
    keys = [k for b in batches for k in b["keys"]]
    assert len(keys) == len(set(keys)) and set(keys) < set(good)
    assert {k for k in good if not k.startswith("002")} <= set(keys)  # the other shards are whole
