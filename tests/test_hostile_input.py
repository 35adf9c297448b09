"""Hostile and odd input, one case each: manifests, image files, tar shards, pickles, evaluation data.

Every fixture is written here in the on-disk format users have. Where a case needed a fix, the test
fails without it (BOM, empty captions, 16-bit images, empty tar captions, eval warnings); the others
pin behaviour that must not regress (skipped-and-counted, never executed, never extracted)."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from siglip.data import Collate, ManifestError, PairDataset, load_image, read_caption_folder, read_manifest
from siglip.transforms import image_transform, to_rgb

from .conftest import write_image

# --------------------------------------------------------------------------------------------------
# Manifests


def test_manifest_with_bom_crlf_and_quoted_newlines(tmp_path):
    write_image(tmp_path / "a.png")
    raw = 'image,caption\r\na.png,"two lines\r\nin one caption"\r\na.png,"with, a comma"\r\n'
    (tmp_path / "m.csv").write_bytes(b"\xef\xbb\xbf" + raw.encode())  # Excel's "CSV UTF-8"
    pairs = read_manifest(tmp_path / "m.csv")
    assert [c for _, c in pairs] == ["two lines\r\nin one caption", "with, a comma"]
    assert pairs[0][0] == str(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"image": "a.png", "caption": "x"}\r\n')
    assert read_manifest(tmp_path / "m.jsonl") == [(str(tmp_path / "a.png"), "x")]
    (tmp_path / "m.tsv").write_bytes(b"\xef\xbb\xbfimage\tcaption\r\na.png\tcaf\xc3\xa9\r\n")
    assert read_manifest(tmp_path / "m.tsv") == [(str(tmp_path / "a.png"), "café")]


def test_unicode_kept_and_empty_captions_skipped_and_counted(tmp_path, caplog, tokenizer):
    rows = ["image,caption", "a.png,猫が走る 🐈 naïve", "b.png,", "c.png,   ", "d.png,ok"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        pairs = read_manifest(tmp_path / "m.csv")
    assert [c for _, c in pairs] == ["猫が走る 🐈 naïve", "ok"]
    assert "2 rows with an empty caption skipped (first at line 3)" in caplog.text
    assert tokenizer([pairs[0][1]]).shape == (1, 8)  # unknown pieces, no crash
    (tmp_path / "e.csv").write_text("image,caption\nb.png,\n")
    with pytest.raises(ManifestError, match=r"e\.csv: no rows with a caption \(1 empty\)"):
        read_manifest(tmp_path / "e.csv")
    # caption folders: an empty .txt is skipped like a missing one
    write_image(tmp_path / "f" / "x.png")
    write_image(tmp_path / "f" / "y.png")
    (tmp_path / "f" / "x.txt").write_text("\n")
    (tmp_path / "f" / "y.txt").write_bytes(b"\xef\xbb\xbfa caption\n")
    assert read_caption_folder(tmp_path / "f") == [(str(tmp_path / "f" / "y.png"), "a caption")]


def test_missing_columns_and_keys_name_the_file_and_line(tmp_path):
    (tmp_path / "nocap.csv").write_text("image,width\na.png,3\n")
    with pytest.raises(ManifestError, match=r"nocap\.csv: cannot find the caption column among \['image', 'width'\]"):
        read_manifest(tmp_path / "nocap.csv")
    (tmp_path / "short.csv").write_text("image,caption,extra\na.png,x,1\nb.png,y\n")
    with pytest.raises(ManifestError, match=r"short\.csv:3: 2 fields, the header has 3"):
        read_manifest(tmp_path / "short.csv")
    (tmp_path / "m.jsonl").write_text('{"image": "a.png", "caption": "x"}\n{"image": "b.png"}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: missing key 'image' or 'caption'"):
        read_manifest(tmp_path / "m.jsonl")
    (tmp_path / "n.jsonl").write_text('{"image": "a.png", "caption": 3}\n')
    with pytest.raises(ManifestError, match=r"n\.jsonl:1: caption is not text: 3"):
        read_manifest(tmp_path / "n.jsonl")


def test_million_character_caption_is_read_and_truncated_by_the_tokenizer(tmp_path, tokenizer):
    long = "a red square on white " * 50_000  # 1.1M characters
    (tmp_path / "m.csv").write_text(f'image,caption\na.png,"{long}"\n')
    [(_, caption)] = read_manifest(tmp_path / "m.csv")
    assert len(caption) == len(long)
    ids = tokenizer([caption])
    assert ids.shape == (1, 8)
    assert torch.equal(ids, tokenizer([long[:200]]))  # the same first pieces; EOS kept last


# --------------------------------------------------------------------------------------------------
# Image files: decoded in PairDataset (a failure = None, counted by the collate)


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG claiming width x height 8-bit greyscale (tiny file: the pixels are never read)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _dataset(paths: list[Path]) -> PairDataset:
    return PairDataset([(str(p), "a caption") for p in paths], image_transform(16, "bicubic"))


def test_unreadable_images_are_skipped_with_their_reason_and_counted(tmp_path, caplog, tokenizer):
    good = write_image(tmp_path / "good.png")
    (tmp_path / "bomb.png").write_bytes(_png_header(20000, 20000))  # 400M pixels > 2 x PIL's limit
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    paths = [good, tmp_path / "bomb.png", tmp_path / "trunc.jpg", tmp_path / "text.jpg", tmp_path / "gone.png"]
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # a truncated file must fail, not decode grey
    with caplog.at_level(logging.WARNING):
        items = [_dataset(paths)[i] for i in range(len(paths))]
    assert items[0] is not None and all(x is None for x in items[1:])
    assert "bomb.png: Image size (400000000 pixels) exceeds limit" in caplog.text
    assert "trunc.jpg" in caplog.text and "gone.png" in caplog.text
    batch = Collate(tokenizer)(items)
    assert batch["pixels"].shape == (1, 3, 16, 16) and batch["skipped"] == 4


def test_tiny_cmyk_palette_and_alpha_images_decode_like_the_peers(tmp_path):
    Image.new("RGB", (1, 1), (5, 6, 7)).save(tmp_path / "one.png")
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(tmp_path / "pal.png", transparency=0)
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    x = _dataset([tmp_path / "one.png"])[0][0]
    assert x.shape == (3, 16, 16) and torch.allclose(x, (torch.tensor([5.0, 6, 7]) / 255 - 0.5)[:, None, None] / 0.5)
    for name in ("cmyk.jpg", "pal.png", "rgba.png"):
        # Hugging Face and open_clip call convert("RGB"): alpha dropped, no background compositing
        assert np.array_equal(
            np.asarray(load_image(str(tmp_path / name))), np.asarray(Image.open(tmp_path / name).convert("RGB"))
        )
    assert load_image(str(tmp_path / "cmyk.jpg")).getpixel((0, 0)) == (255, 0, 255)
    assert load_image(str(tmp_path / "pal.png")).getpixel((0, 0)) == (255, 0, 0)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    a = (np.arange(1024, dtype=np.uint16).reshape(4, 256) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    rgb = np.asarray(load_image(str(tmp_path / "g16.png")))
    assert rgb.shape == (4, 256, 3)
    np.testing.assert_array_equal(
        rgb[..., 0], np.round(a / 257).astype(np.uint8)
    )  # PIL's convert: 255 nearly everywhere
    assert rgb[..., 0].mean() < 140
    np.testing.assert_array_equal(np.asarray(to_rgb(Image.open(tmp_path / "g16.png"))), rgb)


def test_exif_orientation_is_not_applied(tmp_path):
    """Decision: stored pixels, as big_vision (TF decode_jpeg) and open_clip train on them; the
    released checkpoints saw EXIF-rotated photos unrotated. (transformers' load_image helper does
    transpose, its image processors do not.)"""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    loaded = load_image(str(tmp_path / "rot.jpg"))
    assert loaded.size == (40, 20)
    assert np.array_equal(np.asarray(loaded), np.asarray(Image.open(tmp_path / "rot.jpg").convert("RGB")))


# --------------------------------------------------------------------------------------------------
# Tar shards: members are read as bytes, never extracted


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_hostile_tar_members_are_never_extracted_and_bad_samples_are_counted(tmp_path, caplog):
    from siglip.data.webdataset import TarStream

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(buf, format="PNG")
    png = buf.getvalue()
    shard = tmp_path / "shards" / "000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        _add(tar, "good.png", png), _add(tar, "good.txt", b"fine")
        _add(tar, "../escape.png", png), _add(tar, "../escape.txt", b"dot dot")
        _add(tar, "/abs/x.png", png), _add(tar, "/abs/x.txt", b"absolute")
        _add(tar, "sym.png", kind=tarfile.SYMTYPE, link="/etc/passwd"), _add(tar, "sym.txt", b"symlink")
        _add(tar, "hard.png", kind=tarfile.LNKTYPE, link="good.png"), _add(tar, "hard.txt", b"hardlink")
        _add(tar, "dup.png", png), _add(tar, "dup.txt", b"first")
        _add(tar, "nocap.png", png)
        _add(tar, "dup.png", png), _add(tar, "dup.txt", b"second")  # the key again, not adjacent: a new sample
        _add(tar, "empty.png", png), _add(tar, "empty.txt", b"  \n")
        _add(tar, "json.png", png), _add(tar, "json.json", b"[1, 2]")
    before = sorted(p for p in tmp_path.rglob("*"))
    stream = TarStream([str(shard)], image_transform(8), None, 64, shuffle_buffer=0)
    with caplog.at_level(logging.WARNING):
        [batch] = list(stream)
    assert batch["keys"] == ["good", "../escape", "/abs/x", "dup", "dup"]
    assert batch["captions"] == ["fine", "dot dot", "absolute", "first", "second"]
    assert batch["skipped"] == 5  # sym, hard (links are not read), nocap, empty, json (not an object)
    for reason in ("sym: no image", "hard: no image", "nocap: no .txt or .json caption", "empty: empty caption"):
        assert reason in caplog.text
    assert "json.json: not a JSON object" in caplog.text
    assert sorted(p for p in tmp_path.rglob("*")) == before and not Path("/abs").exists()


# --------------------------------------------------------------------------------------------------
# Pickles that would run code


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "open_clip_model.safetensors.pt"])
def test_pickles_that_would_run_code_are_refused(tmp_path, name):
    import siglip
    from siglip.checkpoint import read_checkpoint

    marker = tmp_path / "ran"
    evil = tmp_path / name
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Evil(marker)}, evil)  # torch's zip format
    with pytest.raises(ValueError, match=rf"{name}: not a (checkpoint|file) this toolkit can read safely"):
        read_checkpoint(evil)
    with pytest.raises(ValueError, match=rf"{name}"):
        siglip.load(evil)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps(_Evil(marker)))  # a bare pickle (pre-1.6 torch.save style)
    with pytest.raises(ValueError, match=r"legacy\.pt: not a checkpoint this toolkit can read safely"):
        read_checkpoint(legacy)
    assert not marker.exists()


def test_hf_folder_with_an_evil_bin_is_refused(tmp_path):
    import siglip

    marker = tmp_path / "ran"
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    torch.save(_Evil(marker), tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(Exception, match="pytorch_model.bin"):
        siglip.load(tmp_path / "hf")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# Evaluation data with a class or the caption file missing


def test_eval_class_folder_with_an_empty_class_warns_and_keeps_it(tmp_path, caplog):
    from siglip.eval.datasets import classification_set

    write_image(tmp_path / "cat" / "1.png")
    (tmp_path / "dog").mkdir()
    with caplog.at_level(logging.WARNING):
        data = classification_set("folder", tmp_path)
    assert data.classnames == ["cat", "dog"] and data.labels == [0]
    assert "1 class folders have no images (e.g. dog)" in caplog.text


def test_eval_imagenet_with_classes_missing_says_it_is_not_comparable(tmp_path, caplog):
    from siglip.eval.datasets import classification_set

    write_image(tmp_path / "val" / "n01440764" / "a.JPEG")
    write_image(tmp_path / "val" / "n01443537" / "b.JPEG")
    with caplog.at_level(logging.WARNING):
        data = classification_set("imagenet", tmp_path)
    assert data.classnames == ["tench", "goldfish"]
    assert "images of 2 of the 1000 ImageNet-1k classes" in caplog.text and "not comparable" in caplog.text


def test_eval_caption_file_missing_names_what_was_looked_for(tmp_path):
    from siglip.eval.datasets import retrieval_set

    write_image(tmp_path / "flickr30k-images" / "1.jpg")
    with pytest.raises(FileNotFoundError, match=r"flickr30k: no caption file; looked for .*dataset_flickr30k\.json"):
        retrieval_set("flickr30k", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"coco: no caption file for split 'test'"):
        retrieval_set("coco", tmp_path)
