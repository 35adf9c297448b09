"""Few-shot linear probes (siglip.eval.fewshot) against an independent closed-form solution, the
draws per class and seed, and the whole path on a tiny model (features once per split)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from siglip.config import EvalConfig, ModelConfig
from siglip.eval import fewshot
from siglip.eval.datasets import classification_set
from siglip.eval.evaluators import run_evals
from siglip.eval.fewshot import draw_shots, evaluate_fewshot, fewshot_accuracies, fit_probe, pre_logits
from siglip.model import SigLIP
from siglip.tokenizer import Tokenizer
from siglip.transforms import image_transform
from tests.test_eval_wds import CLASSES, write_classification


def primal_reference(x, y, x_test, y_test, num_classes, l2):
    """The probe written out: z-score with the shot set's statistics (+1e-5 on the std), a column
    of 100s, targets +1 for the class and -1 elsewhere, np.linalg.solve on (X^T X + l2 I) W = X^T T."""
    mu = x.sum(0) / len(x)
    sd = np.sqrt(((x - mu) ** 2).sum(0) / len(x)) + 1e-5
    xs = np.hstack([(x - mu) / sd, np.full((len(x), 1), 100.0)])
    targets = np.where(y[:, None] == np.arange(num_classes)[None, :], 1.0, -1.0)
    w = np.linalg.solve(xs.T @ xs + l2 * np.eye(xs.shape[1]), xs.T @ targets)
    xt = np.hstack([(x_test - mu) / sd, np.full((len(x_test), 1), 100.0)])
    return w, float(np.mean((xt @ w).argmax(1) == y_test))


@pytest.mark.parametrize("dim", [6, 48])  # 6: N >= D (eigh of X^T X); 48: N < D (eigh of X X^T)
def test_probe_equals_primal_solve(dim):
    rng = np.random.default_rng(7)
    c, n = 4, 120
    centres = rng.normal(size=(c, dim)) * 0.8
    y = rng.integers(0, c, n)
    scale, shift = rng.uniform(0.1, 10, dim), rng.normal(size=dim) * 5  # features far from z-scored
    x = (centres[y] + rng.normal(size=(n, dim))) * scale + shift
    y_test = rng.integers(0, c, 200)
    x_test = (centres[y_test] + rng.normal(size=(200, dim))) * scale + shift
    for l2 in (1024.0, 3.0):
        draws = {s: draw_shots(y, c, (1, 3, 8), s) for s in range(3)}
        accs = fewshot_accuracies(draws, x, y, np.ones(n, bool), x_test, y_test, np.ones(200, bool), c, l2)
        for k in (1, 3, 8):
            for s in range(3):
                idx = draws[s][k]
                w, acc = primal_reference(x[idx], y[idx], x_test, y_test, c, l2)
                assert abs(accs[k][s] - acc) <= 1e-6, (dim, l2, k, s)
                np.testing.assert_allclose(fit_probe(x[idx], y[idx], c, l2).w, w, rtol=1e-6, atol=1e-9)
    assert len({a for v in accs.values() for a in v}) > 2, "accuracies that never change cannot tell solutions apart"


def test_unreadable_test_image_is_a_miss():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 5)), np.arange(30) % 3
    draws = {0: draw_shots(y, 3, (5,), 0)}
    ok = np.ones(30, bool)
    all_read = fewshot_accuracies(draws, x, y, ok, x, y, ok, 3)[5][0]
    test_ok = ok.copy()
    test_ok[0] = False
    one_missing = fewshot_accuracies(draws, x, y, ok, x, y, test_ok, 3)[5][0]
    idx = draws[0][5]
    first_right = fit_probe(x[idx], y[idx], 3).predict(x[:1])[0] == y[0]
    assert one_missing == pytest.approx(all_read - first_right / 30)


def test_shots_drawn_per_class_and_seed_reproducibly():
    labels = np.array([0] * 7 + [1] * 3 + [2] * 12 + [3] * 1)
    np.random.default_rng(3).shuffle(labels)
    a, b = draw_shots(labels, 5, (1, 5, 10), 0), draw_shots(labels, 5, (1, 5, 10), 0)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # same seed, same draw
    assert not np.array_equal(a[5], draw_shots(labels, 5, (5,), 1)[5])  # another seed, another draw
    for k in (1, 5, 10):
        counts = np.bincount(labels[a[k]], minlength=5)
        assert counts.tolist() == [min(k, n) for n in (7, 3, 12, 1, 0)]  # k per class, all of a smaller class
        assert len(set(a[k].tolist())) == len(a[k])
    assert set(a[1]) <= set(a[5]) <= set(a[10])  # nested, as big_vision's prefixes of one permutation
    rng = np.random.default_rng(0)  # big_vision's order of draws: one permutation per class, in label order
    perms = [rng.permutation(np.flatnonzero(labels == c)) for c in range(5)]
    assert a[5].tolist() == [i for p in perms for i in p[:5].tolist()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("fewshot")
    write_classification(tmp / "set", n=30, shards=1)
    (tmp / "set" / "test").rename(tmp / "set" / "train")
    write_classification(tmp / "set", n=20, shards=1)
    tokenizer = Tokenizer.train([f"a photo of a {c}" for c in CLASSES] * 6, vocab_size=40, length=8)
    torch.manual_seed(0)
    model = SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size))
    return tmp / "set", model.eval(), tokenizer


def test_features_are_the_map_head_output(tiny):
    _, model, _ = tiny
    pixels = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        feats = pre_logits(model, pixels)
        np.testing.assert_allclose(
            feats, model.image.head(model.image.forward_features(pixels)), rtol=1e-4, atol=1e-5
        )  # the MAP head's output
        z = feats / feats.norm(dim=-1, keepdim=True)
        np.testing.assert_allclose(z, model.encode_image(pixels), rtol=1e-4, atol=1e-5)  # no projection after it


def test_whole_path_features_once_per_split(tiny, monkeypatch):
    folder, model, tokenizer = tiny
    train, test = classification_set("wds", folder, "train"), classification_set("wds", folder, "test")
    calls = []
    real = fewshot.image_features
    monkeypatch.setattr(
        fewshot, "image_features", lambda m, images, *a, **k: calls.append(len(images)) or real(m, images, *a, **k)
    )
    transform = image_transform(16, "bicubic")
    metrics = evaluate_fewshot(model, transform, train, test, (1, 2, 4), seeds=3, batch_size=8, num_workers=0)
    assert len(calls) == 2 and calls[1] == 20 and calls[0] <= 30  # once per split, for every shot and seed
    # the same numbers from the features computed directly
    tr_x, tr_ok = real(model, train.images, transform, num_workers=0)
    te_x, te_ok = real(model, test.images, transform, num_workers=0)
    y = np.array(train.labels)
    draws = {s: draw_shots(y, 5, (1, 2, 4), s) for s in range(3)}
    accs = fewshot_accuracies(
        draws, tr_x.numpy(), y, tr_ok.numpy(), te_x.numpy(), np.array(test.labels), te_ok.numpy(), 5
    )
    for k in (1, 2, 4):
        assert metrics[f"{k}shot_acc1"] == pytest.approx(np.mean(accs[k]), abs=1e-6)
        assert metrics[f"{k}shot_acc1_std"] == pytest.approx(np.std(accs[k]), abs=1e-6)
    # the training evaluator gives the scripts' numbers
    ev = EvalConfig(dataset="wds", task="fewshot", path=str(folder), shots=[1, 2, 4], seeds=3, batch_size=8)
    out = run_evals([ev], model, tokenizer, 16, "bicubic", "", num_workers=0)
    assert out["wds/fewshot_4shot_acc1"] == pytest.approx(metrics["4shot_acc1"], abs=1e-6)
    assert out["wds/fewshot_unreadable_images"] == 0


def test_cifar_arrays_and_class_folders(tiny, tmp_path):
    """The other readers' splits: CIFAR's pixel arrays (train = data_batch_1..5) and DIR/train, DIR/test
    class folders; splits naming different classes are refused."""
    import pickle

    from PIL import Image

    _, model, _ = tiny
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            rows = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
            pickle.dump({b"labels": list(range(10)), b"data": rows}, f, protocol=2)
    transform = image_transform(16, "bicubic")
    train, test = classification_set("cifar10", tmp_path, "train"), classification_set("cifar10", tmp_path)
    metrics = evaluate_fewshot(model, transform, train, test, (1, 3), seeds=2, num_workers=0)
    assert len(train.labels) == 50 and 0 <= metrics["3shot_acc1"] <= 1 and "3shot_acc1_seed1" in metrics
    for split, classes in (("train", ["cat", "dog"]), ("test", ["cat", "dog", "emu"])):
        for c in classes:
            (tmp_path / "f" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (9, 9), (40 * i, 90, len(c) * 30)).save(tmp_path / "f" / split / c / f"{i}.png")
    train, test = (
        classification_set("folder", tmp_path / "f", "train"),
        classification_set("folder", tmp_path / "f", "test"),
    )
    with pytest.raises(ValueError, match="different classes"):
        evaluate_fewshot(model, transform, train, test, (1,), seeds=1, num_workers=0)
