"""The evaluation dataset readers on tiny fixtures written in each exact on-disk format."""

import csv
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from siglip.eval.cifar import read_cifar_pickle
from siglip.eval.datasets import classification_set, retrieval_set
from siglip.eval.imagenet import read_imagenet
from siglip.eval.prompts import bundled, read_templates

TENCH, GOLDFISH, SHARK = "n01440764", "n01443537", "n01484850"  # sorted: labels 0, 1, 2


def _img(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value, value, value)).save(
        path, format="JPEG" if path.suffix.upper() == ".JPEG" else None
    )


def test_bundled_lists():
    assert len(bundled("imagenet_templates")) == 80
    assert len(bundled("cifar_templates")) == 18
    names, synsets = bundled("imagenet_classnames"), bundled("imagenet_synsets")
    assert len(names) == len(synsets) == 1000 and synsets == sorted(synsets)
    assert names[0] == "tench" and synsets[0] == TENCH
    assert bundled("cifar10_classnames")[0] == "airplane" and len(bundled("cifar10_classnames")) == 10
    c100 = bundled("cifar100_classnames")
    assert len(c100) == 100 and "aquarium fish" in c100
    assert all(t.count("{}") == 1 for t in bundled("imagenet_templates") + bundled("cifar_templates"))


def test_imagenet_synset_folders(tmp_path):
    for wnid, n in ((SHARK, 1), (TENCH, 2), (GOLDFISH, 1)):
        for i in range(n):
            _img(tmp_path / "val" / wnid / f"ILSVRC2012_val_{wnid}_{i}.JPEG")
    data = classification_set("imagenet", tmp_path)
    assert data.labels == [0, 0, 1, 2]
    assert data.classnames == ["tench", "goldfish", "great white shark"]
    assert len(data.templates) == 80
    assert Path(data.images[3]).parent.name == SHARK


def _write_meta_mat(path: Path, synsets: list[tuple[int, str, int]]) -> None:
    """The devkit's data/meta.mat: a (n, 1) struct array `synsets` with these fields."""
    fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ]
    arr = np.zeros((len(synsets), 1), dtype=[(f, object) for f in fields])
    for r, (i, wnid, children) in enumerate(synsets):
        arr[r, 0] = (i, wnid, f"words {wnid}", "gloss", children, np.zeros((0,)), 0, 1300)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"synsets": arr})


def test_imagenet_flat_with_devkit(tmp_path):
    # the devkit's ids are in its own order (id 1 is NOT the first sorted synset), plus a non-leaf
    data_dir = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    _write_meta_mat(data_dir / "meta.mat", [(1, SHARK, 0), (2, TENCH, 0), (3, GOLDFISH, 0), (1001, "n00001740", 3)])
    (data_dir / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n3\n1\n")
    for n in (4, 1, 2, 3):
        _img(tmp_path / "val" / f"ILSVRC2012_val_{n:08d}.JPEG")
    data = classification_set("imagenet", tmp_path)
    assert [Path(p).name for p in data.images] == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in (1, 2, 3, 4)]
    assert data.labels == [2, 0, 1, 2]  # shark, tench, goldfish, shark by sorted WNID
    assert data.classnames == ["tench", "goldfish", "great white shark"]


def test_imagenet_devkit_errors_name_the_file(tmp_path):
    data_dir = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    (data_dir).mkdir(parents=True)
    (data_dir / "ILSVRC2012_validation_ground_truth.txt").write_text("1\nx\n")
    _img(tmp_path / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(FileNotFoundError, match="meta.mat"):
        read_imagenet(tmp_path)
    _write_meta_mat(data_dir / "meta.mat", [(1, SHARK, 0)])
    with pytest.raises(ValueError, match="ground_truth.txt:2"):
        read_imagenet(tmp_path)


def test_imagenet_kaggle(tmp_path):
    (tmp_path / "LOC_synset_mapping.txt").write_text(
        f"{TENCH} tench, Tinca tinca\n{GOLDFISH} goldfish, Carassius auratus\n{SHARK} great white shark\n"
    )
    rows = [
        ("ILSVRC2012_val_00000002", f"{SHARK} 1 2 3 4 {SHARK} 5 6 7 8"),
        ("ILSVRC2012_val_00000001", f"{GOLDFISH} 9 9 9 9"),
    ]
    with open(tmp_path / "LOC_val_solution.csv", "w", newline="") as f:
        csv.writer(f).writerows([("ImageId", "PredictionString"), *rows])
    for name, _ in rows:
        _img(tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val" / f"{name}.JPEG")
    _img(tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "train" / TENCH / "x.JPEG")  # the train folders do not confuse it
    data = classification_set("imagenet", tmp_path)
    assert [Path(p).name for p in data.images] == ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"]
    assert data.labels == [1, 2]
    assert data.classnames == ["tench", "goldfish", "great white shark"]


def test_imagenet_missing_layout_names_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        read_imagenet(tmp_path)
    for name in ("n########", "ILSVRC2012_validation_ground_truth.txt", "meta.mat", "LOC_val_solution.csv"):
        assert name in str(e.value)


def _cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def test_cifar10(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": 10000, b"num_vis": 3072}, f, protocol=2)
    data = _cifar_rows(5, 0)
    data[0, :1024], data[0, 1024:2048], data[0, 2048:] = 10, 20, 30
    data[0, 1] = 99  # R plane, row 0, column 1
    with open(d / "test_batch", "wb") as f:
        pickle.dump(
            {
                b"batch_label": b"testing batch 1 of 1",
                b"labels": [3, 0, 9, 1, 1],
                b"data": data,
                b"filenames": [b"a.png"] * 5,
            },
            f,
            protocol=2,
        )
    s = classification_set("cifar10", tmp_path)  # the parent folder works
    assert s.images.shape == (5, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.images[0, 0, 0].tolist() == [10, 20, 30] and s.images[0, 0, 1, 0] == 99 and s.images[0, 1, 0, 0] == 10
    np.testing.assert_array_equal(s.images[2, :, :, 1], data[2, 1024:2048].reshape(32, 32))
    assert s.labels == [3, 0, 9, 1, 1]
    assert s.classnames[3] == "cat" and len(s.templates) == 18
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        classification_set("cifar10", d, split="train")


def test_cifar100_train_split(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    fine = [n.replace(" ", "_").encode() for n in bundled("cifar100_classnames")]
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": fine, b"coarse_label_names": [b"x"] * 20}, f, protocol=4)
    for split, n in (("train", 4), ("test", 2)):
        with open(d / split, "wb") as f:
            rows = {b"data": _cifar_rows(n, n), b"fine_labels": list(range(95, 95 + n)), b"coarse_labels": [0] * n}
            pickle.dump(rows, f, protocol=4)
    s = classification_set("cifar100", d, split="train")
    assert s.labels == [95, 96, 97, 98] and s.classnames[98] == "woman"
    assert len(classification_set("cifar100", d).labels) == 2  # test by default
    assert bundled("cifar100_classnames")[1] == "aquarium fish"


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _Evil(marker)}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load .*system"):
        read_cifar_pickle(path)
    assert not marker.exists()


def test_folder_and_user_lists(tmp_path):
    for cls, n in (("sea_lion", 2), ("cat", 1)):
        for i in range(n):
            _img(tmp_path / "data" / cls / f"{i}.png")
    (tmp_path / "names.txt").write_text("kitty\nsea lion pup\n")
    (tmp_path / "templates.txt").write_text("a {}.\n\nan image of {}\n")
    s = classification_set("folder", tmp_path / "data")
    assert s.labels == [0, 1, 1] and s.classnames == ["cat", "sea lion"]
    s = classification_set(
        "folder", tmp_path / "data", classnames_file=tmp_path / "names.txt", templates_file=tmp_path / "templates.txt"
    )
    assert s.classnames == ["kitty", "sea lion pup"] and s.templates == ["a {}.", "an image of {}"]
    (tmp_path / "bad.txt").write_text("a {}\nno slot here\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        read_templates(tmp_path / "bad.txt")


def _karpathy_flickr(tmp_path: Path) -> None:
    images = [
        {"filename": "1.jpg", "split": "test", "sentences": [{"raw": f"one {k}"} for k in range(5)]},
        {"filename": "2.jpg", "split": "train", "sentences": [{"raw": "two"}]},
        {"filename": "3.jpg", "split": "test", "sentences": [{"raw": "three a"}, {"raw": "three b"}]},
    ]
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    for name in ("1.jpg", "2.jpg"):  # 3.jpg is missing on disk: listed, later counted as unreadable
        _img(tmp_path / "flickr30k-images" / name)


def test_flickr30k_karpathy(tmp_path):
    _karpathy_flickr(tmp_path)
    s = retrieval_set("flickr30k", tmp_path)
    assert [Path(p).name for p in s.images] == ["1.jpg", "3.jpg"]
    assert Path(s.images[0]).parent.name == "flickr30k-images"
    assert s.texts == [f"one {k}" for k in range(5)] + ["three a", "three b"]
    assert s.image_of_text == [0] * 5 + [1, 1]
    assert len(retrieval_set("flickr30k", tmp_path, "all").images) == 3
    with pytest.raises(ValueError, match="splits present"):
        retrieval_set("flickr30k", tmp_path, "val")


def test_flickr30k_token(tmp_path):
    lines = [
        "1000092795.jpg#0\tTwo young guys .",
        "1000092795.jpg#1\tTwo men outside .",
        "10002456.jpg#0\tSeveral men .",
    ]
    (tmp_path / "results_20130124.token").write_text("\n".join(lines) + "\n")
    for name in ("1000092795.jpg", "10002456.jpg"):
        _img(tmp_path / "flickr30k-images" / name)
    with pytest.raises(ValueError, match="--split all"):
        retrieval_set("flickr30k", tmp_path)  # the .token file has no test split
    s = retrieval_set("flickr30k", tmp_path, "all")
    assert [Path(p).name for p in s.images] == ["1000092795.jpg", "10002456.jpg"]
    assert s.texts == ["Two young guys .", "Two men outside .", "Several men ."] and s.image_of_text == [0, 0, 1]
    (tmp_path / "test_images.txt").write_text("10002456.jpg\n")
    s = retrieval_set("flickr30k", tmp_path / "results_20130124.token", str(tmp_path / "test_images.txt"))
    assert s.texts == ["Several men ."]
    (tmp_path / "results_20130124.token").write_text("1000092795.jpg Two young guys\n")
    with pytest.raises(ValueError, match="token:1"):
        retrieval_set("flickr30k", tmp_path, "all")


def test_coco_karpathy(tmp_path):
    images = [
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000042.jpg",
            "split": "test",
            "sentences": [{"raw": "a"}, {"raw": "b"}],
        },
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000073.jpg",
            "split": "restval",
            "sentences": [{"raw": "c"}],
        },
        {
            "filepath": "train2014",
            "filename": "COCO_train2014_000000000009.jpg",
            "split": "test",
            "sentences": [{"raw": "d"}],
        },
    ]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images}))
    for img in images:
        _img(tmp_path / img["filepath"] / img["filename"])
    s = retrieval_set("coco", tmp_path)
    assert [Path(p).relative_to(tmp_path).as_posix() for p in s.images] == [
        "val2014/COCO_val2014_000000000042.jpg",
        "train2014/COCO_train2014_000000000009.jpg",
    ]
    assert s.texts == ["a", "b", "d"] and s.image_of_text == [0, 0, 1]
    assert retrieval_set("coco", tmp_path, "restval").texts == ["c"]


def test_coco_official_captions(tmp_path):
    ann = {
        "images": [
            {"id": 139, "file_name": "000000000139.jpg"},
            {"id": 285, "file_name": "000000000285.jpg"},
            {"id": 632, "file_name": "000000000632.jpg"},
        ],
        "annotations": [
            {"id": 1, "image_id": 285, "caption": "a bear"},
            {"id": 2, "image_id": 139, "caption": "a room"},
            {"id": 3, "image_id": 285, "caption": "a big bear"},
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2017.json").write_text(json.dumps(ann))
    for img in ann["images"]:
        _img(tmp_path / "val2017" / img["file_name"])
    with pytest.raises(FileNotFoundError, match="--split val2017"):
        retrieval_set("coco", tmp_path)
    s = retrieval_set("coco", tmp_path, "val2017")
    assert [Path(p).name for p in s.images] == ["000000000139.jpg", "000000000285.jpg"]  # 632 has no caption
    assert s.texts == ["a room", "a bear", "a big bear"] and s.image_of_text == [0, 1, 1]
    s2 = retrieval_set("coco", tmp_path / "annotations" / "captions_val2017.json")
    assert s2 == s


def test_manifest_groups_captions_by_image(tmp_path):
    (tmp_path / "pairs.csv").write_text("image,caption\na.png,first\nb.png,second\na.png,third\n")
    s = retrieval_set("manifest", tmp_path / "pairs.csv")
    assert [Path(p).name for p in s.images] == ["a.png", "b.png"]
    assert s.texts == ["first", "second", "third"] and s.image_of_text == [0, 1, 0]


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        classification_set("mnist", tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset_flickr30k.json"):
        retrieval_set("flickr30k", tmp_path)
