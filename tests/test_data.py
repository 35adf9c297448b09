"""Training pairs from manifests and caption folders; corrupt images; deterministic batches."""

import json

import pytest
import torch

from siglip.data import (
    Collate,
    EpochBatchSampler,
    ManifestError,
    PairDataset,
    epoch_loader,
    find_pairs,
    read_caption_folder,
    read_manifest,
)
from siglip.transforms import image_transform

from .conftest import REPO, write_image


def test_csv_manifest_with_detected_columns_and_relative_paths(tmp_path):
    write_image(tmp_path / "imgs/a.png")
    (tmp_path / "m.csv").write_text('filepath,title,extra\nimgs/a.png,"a cat, sleeping",1\n/abs/b.jpg,a dog,2\n')
    pairs = read_manifest(tmp_path / "m.csv")
    assert pairs == [(str(tmp_path / "imgs/a.png"), "a cat, sleeping"), ("/abs/b.jpg", "a dog")]


def test_tsv_and_jsonl_and_named_columns(tmp_path):
    (tmp_path / "m.tsv").write_text("url\tcaption\nx.jpg\ta cat\n")
    assert read_manifest(tmp_path / "m.tsv", image_column="url")[0][1] == "a cat"
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"file_name": "x.jpg", "text": "hi"})
        + "\n\n"
        + json.dumps({"file_name": "y.jpg", "text": "ho"})
        + "\n"
    )
    assert [c for _, c in read_manifest(tmp_path / "m.jsonl")] == ["hi", "ho"]


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("m.csv", "image,caption\na.jpg,ok\nb.jpg,too,many\n", r"m.csv:3: 3 fields, the header has 2"),
        ("m.csv", "image,caption\n,empty image\n", r"m.csv:2: empty or missing image path"),
        (
            "m.jsonl",
            '{"image": "a.jpg", "caption": "ok"}\n{"image": "b.jpg", "caption": \n',
            r"m.jsonl:2: not valid JSON",
        ),
        ("m.jsonl", '{"image": "a.jpg", "caption": "ok"}\n{"image": "b.jpg"}\n', r"m.jsonl:2: missing key"),
        ("m.csv", "picture,words\na.jpg,x\n", r"m.csv: cannot find the image column among \['picture', 'words'\]"),
        ("m.csv", "", r"m.csv: empty manifest"),
    ],
)
def test_malformed_manifest_names_file_and_line(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(ManifestError, match=match):
        read_manifest(tmp_path / name)


def test_caption_folder(tmp_path):
    write_image(tmp_path / "x/1.jpg")
    (tmp_path / "x/1.txt").write_text("a red square\n")
    write_image(tmp_path / "2.png")
    (tmp_path / "2.txt").write_text("another")
    write_image(tmp_path / "3.png")  # no caption: skipped and counted in the log
    pairs = read_caption_folder(tmp_path)
    assert sorted(c for _, c in pairs) == ["a red square", "another"]
    assert find_pairs(str(tmp_path)) == pairs


def test_missing_data_path_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        find_pairs(str(tmp_path / "nothing.csv"))


def test_corrupt_and_missing_images_are_skipped_and_counted(tmp_path, tokenizer):
    good = write_image(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    pairs = [(str(good), "a red square"), (str(tmp_path / "bad.jpg"), "broken"), (str(tmp_path / "gone.png"), "x")]
    ds = PairDataset(pairs, image_transform(16))
    batch = Collate(tokenizer)([ds[i] for i in range(3)])
    assert batch["skipped"] == 2 and batch["pixels"].shape == (1, 3, 16, 16) and batch["ids"].shape == (1, 8)
    assert batch["pixels"].min() >= -1 and batch["pixels"].max() <= 1
    loader = epoch_loader(ds, tokenizer, batch_size=3, epoch=0, start=0, num_workers=1)
    assert sum(b["skipped"] for b in loader) == 2


def test_batches_are_seeded_per_epoch_and_resumable():
    full = list(EpochBatchSampler(10, 3, seed=1, epoch=2))
    assert len(full) == 3 and all(len(b) == 3 for b in full)  # last incomplete batch dropped
    assert list(EpochBatchSampler(10, 3, seed=1, epoch=2, start=1)) == full[1:]
    assert list(EpochBatchSampler(10, 3, seed=1, epoch=3)) != full
    assert list(EpochBatchSampler(2, 8, seed=0, epoch=0)) and len(list(EpochBatchSampler(2, 8, 0, 0))[0]) == 2


def test_augmentation_is_reproducible_per_sample(tmp_path):
    img = write_image(tmp_path / "a.png", size=(40, 30))
    t = image_transform(16, random_resized_crop=True, horizontal_flip=True, color_jitter=0.4)
    a, b = PairDataset([(str(img), "x")], t, seed=5), PairDataset([(str(img), "x")], t, seed=5)
    torch.testing.assert_close(a[0][0], b[0][0])
    a.set_epoch(1)
    assert not torch.equal(a[0][0], b[0][0])


def test_index_manifests_share_the_training_reader(tmp_path):
    """`siglip embed`'s manifest source reads rows as training does (a BOM, CRLF, a caption column
    that may be absent), so a manifest that trains also indexes."""
    from siglip.index.sources import manifest_items

    write_image(tmp_path / "a.png")
    (tmp_path / "m.csv").write_bytes('\ufefffilepath,caption\r\na.png,"two\r\nlines"\r\n'.encode())
    (tmp_path / "n.csv").write_text("filepath\na.png\n")
    [with_caption] = manifest_items(tmp_path / "m.csv")
    [without] = manifest_items(tmp_path / "n.csv")
    assert with_caption.record["caption"] == "two\r\nlines" and "caption" not in without.record
    assert with_caption.path == without.path == str(tmp_path / "a.png")
    (tmp_path / "bad.csv").write_text("picture,caption\na.png,x\n")
    with pytest.raises(ManifestError, match="bad.csv: cannot find the image column"):
        manifest_items(tmp_path / "bad.csv")


def photo_jpeg(path, size=(640, 480)):
    """A smooth-gradient JPEG: decoded at reduced scale it must look like the full decode resized."""
    from PIL import Image

    x = torch.linspace(0, 1, size[0])[None, :, None]
    y = torch.linspace(0, 1, size[1])[:, None, None]
    rgb = torch.cat([x.expand(size[1], -1, 1), y.expand(-1, size[0], 1), (x * y).expand(size[1], size[0], 1)], -1)
    Image.fromarray((rgb * 255).byte().numpy()).save(path, quality=92)
    return path


def test_jpeg_draft_decodes_at_reduced_scale_that_still_covers_the_crop(tmp_path):
    from siglip.data import load_image
    from siglip.transforms import draft_size

    jpg = photo_jpeg(tmp_path / "a.jpg")
    png = write_image(tmp_path / "a.png", size=(640, 480))
    assert load_image(jpg).size == (640, 480)  # no draft: in full
    assert load_image(jpg, 224).size == (320, 240)  # 1/2 scale: both sides still >= 224
    assert load_image(jpg, 100).size == (160, 120)  # 1/4
    assert load_image(jpg, 300).size == (640, 480)  # 1/2 would give 240 < 300: in full
    assert load_image(png, 100).size == (640, 480)  # only JPEGs have a draft mode
    assert draft_size(224) == 224
    assert draft_size(224, random_resized_crop=True, crop_scale_min=0.5) == 366  # 224 / sqrt(0.5 * 3/4)
    # the training transform's output is close to the full decode's (the DCT did the downscaling)
    tf = image_transform(224)
    full, drafted = tf(load_image(jpg)), tf(load_image(jpg, 224))
    assert drafted.shape == full.shape == (3, 224, 224)
    assert (drafted - full).abs().mean() < 0.02  # of a [-1, 1] range


def test_training_data_decodes_jpegs_in_draft_mode_unless_turned_off(tmp_path, tokenizer):
    from siglip.config import load_config_file
    from siglip.distributed import Runtime
    from siglip.train.build import build_data, find_source

    rows = ["image,caption"] + [f"{i}.jpg,a gradient {i}" for i in range(4)]
    for i in range(4):
        photo_jpeg(tmp_path / f"{i}.jpg")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config_file(REPO / "configs/demo_config.py")
    cfg.data.path, cfg.data.num_workers, cfg.train.batch_size = str(tmp_path / "pairs.csv"), 0, 4
    seen = {}
    for on in (True, False):
        cfg.data.jpeg_draft = on
        data = build_data(cfg, find_source(cfg), tokenizer, Runtime())
        (batch,) = list(data.batches(0, 0))
        seen[on] = batch["pixels"]
    assert seen[True].shape == seen[False].shape == (4, 3, cfg.model.image_size, cfg.model.image_size)
    assert not torch.equal(seen[True], seen[False])  # drafted: decoded at 1/8 scale for the demo's 16 px
    assert (seen[True] - seen[False]).abs().mean() < 0.05
