"""Zero-shot and retrieval on a tiny model: the pipeline against a naive per-image reference, the
scripts against the in-training evaluators (same numbers), and unreadable images counted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import siglip
from siglip.config import EvalConfig, ModelConfig
from siglip.data import load_image
from siglip.eval.datasets import classification_set, retrieval_set
from siglip.eval.evaluators import run_evals
from siglip.eval.retrieval import evaluate_retrieval
from siglip.eval.zero_shot import class_embeddings, evaluate_zero_shot
from siglip.model import SigLIP, l2_normalize
from siglip.tokenizer import Tokenizer
from siglip.transforms import image_transform

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"red_square": (220, 30, 30), "green_circle": (30, 200, 40), "blue_star": (20, 40, 230)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved tiny model, a class-folder dataset with one corrupt file, and a caption manifest."""
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("eval")
    for name, rgb in COLOURS.items():
        (tmp / "shapes" / name).mkdir(parents=True)
        for i in range(3):
            shade = tuple(min(255, c + 10 * i) for c in rgb)
            Image.new("RGB", (12 + 2 * i, 12), shade).save(tmp / "shapes" / name / f"{i}.png")
    (tmp / "shapes" / "blue_star" / "broken.png").write_bytes(b"not a png")
    rows = ["image,caption"]
    for name in COLOURS:
        for i in range(3):
            rows.append(f"shapes/{name}/{i}.png,a {name.replace('_', ' ')} number {i}")
        rows.append(f"shapes/{name}/0.png,another {name.split('_')[0]} picture")
    rows.append("shapes/blue_star/broken.png,a broken star")
    (tmp / "pairs.csv").write_text("\n".join(rows) + "\n")
    captions = [r.split(",", 1)[1] for r in rows[1:]] + ["a photo of a red square", "the digit seven"]
    tokenizer = Tokenizer.train(captions * 5, vocab_size=48, length=8)
    torch.manual_seed(0)
    model = SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size))
    siglip.save_model(tmp / "model.pt", model, tokenizer, "bicubic")
    return tmp, siglip.load(tmp / "model.pt")


def _script(name: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    out = Path(args[args.index("--output") + 1])
    subprocess.run(
        [sys.executable, str(ROOT / "evaluation" / name), *args], check=True, env=env, cwd=ROOT, capture_output=True
    )
    return json.loads(out.read_text())


def test_zero_shot_matches_naive_reference(world):
    tmp, model = world
    data = classification_set("folder", tmp / "shapes", templates_file="")
    data.templates = ["a {}.", "a photo of a {}.", "{}"]
    m = evaluate_zero_shot(model, model.tokenizer, model.preprocess, data, batch_size=4, num_workers=0)
    # reference: one image and one class at a time, corrupt images wrong
    with torch.no_grad():
        cls = []
        for name in data.classnames:
            z = torch.cat([model.encode_text(model.tokenizer(t.format(name))) for t in data.templates])
            cls.append(l2_normalize(z.mean(0)))
        cls = torch.stack(cls)
        hits1 = 0
        for path, y in zip(data.images, data.labels):
            try:
                img = model.preprocess(load_image(path))
            except Exception:
                continue
            s = (model.encode_image(img[None]) @ cls.T)[0]
            hits1 += int(s.argmax() == y)
    n = len(data.labels)
    assert n == 10 and m["unreadable_images"] == 1  # the broken file stays in the denominator
    assert m["acc1"] == pytest.approx(hits1 / n)
    assert m["acc5"] == pytest.approx(9 / 10)  # 3 classes: every readable image is a top-5 hit
    # bf16 autocast: class embeddings close to the float32 ones, the run completes and counts the same
    ref = class_embeddings(model, model.tokenizer, data.classnames, data.templates)
    assert torch.allclose(ref, cls, atol=1e-5)
    low = class_embeddings(model, model.tokenizer, data.classnames, data.templates, bf16=True)
    assert (low * ref).sum(dim=1).min() > 0.99
    mb = evaluate_zero_shot(model, model.tokenizer, model.preprocess, data, batch_size=4, num_workers=0, bf16=True)
    assert mb["unreadable_images"] == 1


def test_retrieval_matches_naive_reference(world):
    tmp, model = world
    data = retrieval_set("manifest", tmp / "pairs.csv")
    assert len(data.images) == 10 and len(data.texts) == 13
    m = evaluate_retrieval(model, model.tokenizer, model.preprocess, data, batch_size=3, num_workers=0)
    assert m["unreadable_images"] == 1
    with torch.no_grad():
        txt = torch.cat([model.encode_text(model.tokenizer(t)) for t in data.texts])
        img, ok = [], []
        for p in data.images:
            try:
                img.append(model.encode_image(model.preprocess(load_image(p))[None])[0])
                ok.append(True)
            except Exception:
                img.append(torch.zeros(txt.shape[1]))
                ok.append(False)
        img = torch.stack(img)
    # text -> image: the caption's image within the k best readable images
    for k in (1, 5):
        hits = 0
        for j, i in enumerate(data.image_of_text):
            cand = [c for c in range(len(img)) if ok[c]]
            best = sorted(cand, key=lambda c: -(img[c] @ txt[j]).item())[:k]
            hits += ok[i] and i in best
        assert m[f"image_retrieval_recall@{k}"] == pytest.approx(hits / len(data.texts))
        hits = 0
        for i in range(len(img)):
            best = sorted(range(len(txt)), key=lambda j: -(img[i] @ txt[j]).item())[:k]
            hits += ok[i] and any(data.image_of_text[j] == i for j in best)
        assert m[f"text_retrieval_recall@{k}"] == pytest.approx(hits / len(data.images))


def test_scripts_equal_in_training_evaluators(world, tmp_path):
    tmp, model = world
    common = ["--model-path", str(tmp / "model.pt"), "--num-workers", "0", "--batch-size", "4", "--device", "cpu"]
    zs = _script(
        "zero_shot.py",
        *common,
        "--dataset",
        "folder",
        "--data-path",
        str(tmp / "shapes"),
        "--output",
        str(tmp_path / "zs.json"),
    )
    rt = _script(
        "retrieval.py",
        *common,
        "--dataset",
        "manifest",
        "--data-path",
        str(tmp / "pairs.csv"),
        "--output",
        str(tmp_path / "rt.json"),
    )
    assert set(zs) >= {"dataset", "model", "task", "metrics"}
    assert zs["task"] == "zeroshot_classification" and rt["task"] == "zeroshot_retrieval"
    assert zs["model"] == "mu/4" and zs["dataset"] == "folder"
    evals = [
        EvalConfig(dataset="folder", path=str(tmp / "shapes"), batch_size=4),
        EvalConfig(dataset="manifest", task="retrieval", path=str(tmp / "pairs.csv"), batch_size=4),
    ]
    # what training/train.py calls, with the training model object (not the loaded one)
    trained = SigLIP(model.config)
    trained.load_state_dict(model.state_dict())
    trained.train()
    got = run_evals(evals, trained, model.tokenizer, model.config.image_size, "bicubic", "", num_workers=0)
    assert trained.training  # restored after evaluation
    for k, v in zs["metrics"].items():
        assert got[f"folder/{k}"] == pytest.approx(v, abs=1e-6), k
    for k, v in rt["metrics"].items():
        assert got[f"manifest/{k}"] == pytest.approx(v, abs=1e-6), k
    assert zs["metrics"]["unreadable_images"] == 1


def test_eval_config_errors():
    model = SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=48))
    with pytest.raises(ValueError, match="choose one of"):
        run_evals([EvalConfig(dataset="flickr30k")], model, None, 16, "bicubic", "")
    with pytest.raises(ValueError, match="needs a path"):
        run_evals([EvalConfig(dataset="coco", task="retrieval")], model, None, 16, "bicubic", "")
    assert image_transform(16)  # the evaluators' transform is the evaluation one
