"""CLIP_benchmark's webdataset sets: our numbers against clip_benchmark's own evaluation of the same
folder (its wds builder and its zeroshot_classification / zeroshot_retrieval functions, driven with
our tiny model wrapped as it expects), and the bad inputs (named errors, skipped and counted)."""

from __future__ import annotations

import io
import json
import logging

import pytest
import torch
from PIL import Image

from siglip.config import EvalConfig, ModelConfig
from siglip.eval.datasets import classification_set, retrieval_set
from siglip.eval.evaluators import run_evals
from siglip.eval.results import output_file
from siglip.eval.retrieval import evaluate_retrieval
from siglip.eval.wds import sets_to_run, wds_list
from siglip.eval.zero_shot import evaluate_zero_shot
from siglip.model import SigLIP
from siglip.tokenizer import Tokenizer
from siglip.transforms import image_transform
from tests.conftest import write_tar

CLASSES = ["red square", "green circle", "blue star", "yellow moon", "grey cloud"]
RGB = [(220, 30, 30), (30, 200, 40), (20, 40, 230), (230, 220, 30), (128, 128, 128)]
FORMATS = ["png", "jpg", "webp"]


def _image(rgb, i: int, fmt: str) -> bytes:
    img = Image.new("RGB", (14 + i % 5, 12), tuple(min(255, c + 9 * i) for c in rgb))
    img.putpixel((i % 7, 3), (255 - rgb[0], i * 20 % 255, 90))
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if fmt == "jpg" else fmt.upper())
    return buf.getvalue()


def write_classification(root, n: int = 20, shards: int = 2):
    """A classification set as clip_benchmark_export_wds writes it: test/{0..shards-1}.tar + nshards.txt."""
    per = n // shards
    (root / "test").mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        members = {}
        for i in range(s * per, (s + 1) * per):
            fmt = FORMATS[i % 3]
            members[f"s{i:04d}.{fmt}"] = _image(RGB[i % 5], i, fmt)
            members[f"s{i:04d}.cls"] = f"{i % 5}\n".encode()
        write_tar(root / "test" / f"{s}.tar", members)
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n{c}, drawn\nthe {c} in {c}\n")
    return root


WORDS = "zero one two three four five six seven eight nine ten eleven".split()


def captions_of(i: int) -> list[str]:
    """Every caption distinct in its tokens: equal scores would be ties, which the two tools break
    differently (ours: a tie ranks the wrong one first; clip_benchmark: index order)."""
    lines = [f"a {CLASSES[i % 5]} number {WORDS[i]}", f"picture {WORDS[i]} of a {CLASSES[i % 5].split()[1]}"]
    return lines + ([f"{WORDS[i]} has three captions"] if i % 4 == 0 else [])


def write_retrieval(root, n: int = 12):
    members = {}
    for i in range(n):
        members[f"r{i:03d}.jpg"] = _image(RGB[i % 5], i, "jpg")
        members[f"r{i:03d}.txt"] = "\n".join(captions_of(i)).encode()
    (root / "test").mkdir(parents=True)
    write_tar(root / "test" / "0.tar", members)
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "dataset_type.txt").write_text("retrieval\n")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("wds")
    captions = [f"a photo of a {c}" for c in CLASSES] + [c for i in range(12) for c in captions_of(i)]
    tokenizer = Tokenizer.train(captions * 6, vocab_size=96, length=32)
    assert len({tuple(r) for r in tokenizer(captions).tolist()}) == len(set(captions))
    torch.manual_seed(0)
    model = SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=32, vocab_size=tokenizer.vocab_size))
    model.eval()
    transform = image_transform(16, "bicubic")
    return tmp, model, tokenizer, transform


class Wrapped(torch.nn.Module):
    """Our model as clip_benchmark calls it: encode_image(pixels), encode_text(ids)."""

    def __init__(self, model: SigLIP):
        super().__init__()
        self.model = model

    def encode_image(self, pixels):
        return self.model.encode_image(pixels)

    def encode_text(self, ids):
        return self.model.encode_text(ids)


def _clip_benchmark_loader(folder, transform, task: str):
    """clip_benchmark's reading of the folder, batched as its cli batches a wds set."""
    pytest.importorskip("webdataset")
    builder = pytest.importorskip("clip_benchmark.datasets.builder")
    to_rgb = lambda im: transform(im.convert("RGB"))
    ds = builder.build_dataset("wds/test_set", root=str(folder), transform=to_rgb, task=task)
    return ds, torch.utils.data.DataLoader(ds.batched(7), batch_size=None, num_workers=0)


def _topk_accuracy(output, target, topk=(1,)):
    """clip_benchmark's `accuracy` with `.item()`: 1.6.2 calls float() on a 1-element array, which
    numpy 2.4 refuses (TypeError); the formula is theirs, unchanged."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def test_classification_equals_clip_benchmark(world, monkeypatch):
    tmp, model, tokenizer, transform = world
    folder = write_classification(tmp / "cls")
    ds, loader = _clip_benchmark_loader(folder, transform, "zeroshot_classification")
    from clip_benchmark.metrics import zeroshot_classification

    monkeypatch.setattr(zeroshot_classification, "accuracy", _topk_accuracy)

    theirs = zeroshot_classification.evaluate(
        Wrapped(model), loader, tokenizer, ds.classes, ds.templates, device="cpu", amp=False
    )
    data = classification_set("wds", folder)
    assert data.classnames == ds.classes and len(data.templates) == len(ds.templates) == 3
    assert data.templates[2] == "the {0} in {0}"  # clip_benchmark's {c} filled everywhere it appears
    ours = evaluate_zero_shot(model, tokenizer, transform, data, batch_size=8, num_workers=0)
    n = len(data.labels)
    assert n == 20 and ours["unreadable_images"] == 0
    assert 0 < ours["acc1"] < 1, "a set every model gets all right or all wrong cannot tell readers apart"
    for k in ("acc1", "acc5", "mean_per_class_recall"):
        assert abs(ours[k] - theirs[k]) <= 1 / n + 1e-9, (k, ours[k], theirs[k])
    during_training = run_evals([EvalConfig(dataset="wds", path=str(folder))], model, tokenizer, 16, "bicubic", "", 0)
    assert during_training["wds/acc1"] == ours["acc1"]  # EvalConfig(dataset="wds"): the script's numbers


def test_retrieval_equals_clip_benchmark(world):
    tmp, model, tokenizer, transform = world
    folder = write_retrieval(tmp / "ret")
    _, loader = _clip_benchmark_loader(folder, transform, "zeroshot_retrieval")
    from clip_benchmark.metrics import zeroshot_retrieval

    theirs = zeroshot_retrieval.evaluate(Wrapped(model), loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    data = retrieval_set("wds", folder)
    assert len(data.images) == 12 and len(data.texts) == 12 * 2 + 3  # every .txt line is a caption
    ours = evaluate_retrieval(model, tokenizer, transform, data, batch_size=8, num_workers=0)
    for k in (1, 5, 10):
        for key, n in ((f"image_retrieval_recall@{k}", len(data.texts)), (f"text_retrieval_recall@{k}", 12)):
            assert abs(ours[key] - theirs[key]) <= 1 / n + 1e-9, (key, ours[key], theirs[key])
    assert 0 < ours["image_retrieval_recall@1"] < 1


def test_bad_samples_skipped_counted_or_named(world, tmp_path, caplog):
    _, model, tokenizer, transform = world
    folder = write_classification(tmp_path / "bad", n=10, shards=1)
    write_tar(
        tmp_path / "bad" / "test" / "0.tar",
        {
            "a.png": _image(RGB[0], 0, "png"), "a.cls": b"0",
            "b.jpg": b"not a jpeg", "b.cls": b"1",  # unreadable image: a miss, counted
            "c.png": _image(RGB[2], 2, "png"),  # no .cls: skipped and counted
            "d.cls": b"3",  # no image: skipped and counted
            "e.webp": _image(RGB[4], 4, "webp"), "e.cls": b"4",
        },
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        data = classification_set("wds", folder)
    assert [str(i).rsplit("::", 1)[1] for i in data.images] == ["a", "b", "e"] and data.labels == [0, 1, 4]
    assert "no .cls" in caplog.text and "no image" in caplog.text
    metrics = evaluate_zero_shot(model, tokenizer, transform, data, num_workers=0)
    assert metrics["unreadable_images"] == 1

    write_tar(tmp_path / "bad" / "test" / "0.tar", {"a.png": _image(RGB[0], 0, "png"), "a.cls": b"5"})
    with pytest.raises(ValueError, match=r"0\.tar::a\.cls: label 5 outside 0\.\.4"):
        classification_set("wds", folder)
    write_tar(tmp_path / "bad" / "test" / "0.tar", {"a.png": _image(RGB[0], 0, "png"), "a.cls": b"cat"})
    with pytest.raises(ValueError, match=r"0\.tar::a\.cls: not an integer"):
        classification_set("wds", folder)
    (folder / "test" / "nshards.txt").write_text("2\n")
    with pytest.raises(FileNotFoundError, match=r"nshards.txt says 2 shards; 1 missing, e.g. .*1\.tar"):
        classification_set("wds", folder)
    (folder / "classnames.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classnames.txt: missing"):
        classification_set("wds", folder)
    (folder / "test" / "0.tar").write_bytes(b"x" * 700)
    (folder / "test" / "nshards.txt").unlink()
    (folder / "dataset_type.txt").write_text("retrieval\n")
    with pytest.raises(ValueError, match=r"0\.tar: not a readable tar"):
        retrieval_set("wds", folder)


def test_task_list_names_and_outputs(tmp_path, capsys):
    a = write_classification(tmp_path / "wds_cars", n=10, shards=1)
    b = write_retrieval(tmp_path / "wds_vtab-flowers")
    (tmp_path / "sets.txt").write_text("# clip_benchmark's names and plain folders\nwds/cars\n\nwds_vtab-flowers\n")
    assert wds_list(tmp_path / "sets.txt") == [("wds/cars", a), ("wds/vtab-flowers", b)]
    assert wds_list(a) == [("wds/cars", a)]
    (tmp_path / "bad.txt").write_text("wds/missing\n")
    with pytest.raises(FileNotFoundError, match=r"bad.txt:1: .*wds_missing"):
        wds_list(tmp_path / "bad.txt")
    assert output_file("r.json", "wds/cars", "zeroshot_classification", listed=False) == "r.json"
    assert output_file("out", "wds/cars", "t", listed=True) == "out/wds_cars_t.json"
    assert output_file("x/{dataset}.json", "wds/cars", "t", listed=True) == "x/wds_cars.json"
    assert json.loads(json.dumps(str(classification_set("wds", a).images[0]))).endswith("0.tar::s0000")
    assert sets_to_run("wds", str(tmp_path / "sets.txt"), "retrieval") == ([("wds/vtab-flowers", b)], True)
    assert sets_to_run("wds", str(a), "retrieval") == ([("wds/cars", a)], False)  # a folder: run as asked
    assert sets_to_run("cifar10", "/c", "classification") == ([("cifar10", "/c")], False)
    out = capsys.readouterr().out
    assert "wds/cars: a classification set, skipped (evaluation/zero_shot.py runs it)" in out
