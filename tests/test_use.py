"""The model-use API (`siglip.load` -> `siglip.api.Model`) against the model's own forward, the
zero-shot classifier, and loading weights that came without a tokenizer."""

from pathlib import Path

import pytest
import torch
from PIL import Image

import siglip
from siglip.api import TokenizerMissing
from siglip.config import ModelConfig
from siglip.eval.zero_shot import class_embeddings
from siglip.interop.__main__ import main as convert_main
from siglip.model import SigLIP
from tests.conftest import write_image

TEXTS = ["a red square on white", "a blue circle in the dark", "a photo of a cat"]
COLOURS = [(220, 30, 30), (30, 200, 40), (20, 40, 230), (240, 240, 20)]


@pytest.fixture
def saved(tmp_path, tokenizer):
    """Our model file (a random tiny model, t' and b moved off their init) and four image files."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size)
    net = SigLIP(cfg)
    with torch.no_grad():
        net.t_prime.fill_(1.3)
        net.b.fill_(-0.7)
    siglip.save_model(tmp_path / "m.pt", net, tokenizer, "bicubic")
    images = [write_image(tmp_path / "img" / f"{i}.png", c, (18 + 3 * i, 14)) for i, c in enumerate(COLOURS)]
    return tmp_path / "m.pt", net.eval(), images


def test_score_is_sigmoid_of_t_cos_plus_b_from_the_forward(saved, tokenizer):
    path, net, images = saved
    model = siglip.load(path)
    pixels = torch.stack([model.preprocess(Image.open(p).convert("RGB")) for p in images])
    with torch.no_grad():
        zimg, ztxt = net(pixels, tokenizer(TEXTS))
        ref = torch.sigmoid(net.t_prime.exp() * zimg @ ztxt.T + net.b)  # (4, 3)
    got = model.score(images, TEXTS)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    pairs = model.score(images[:3], TEXTS, pairs=True)
    torch.testing.assert_close(pairs, ref.diagonal(), atol=1e-6, rtol=0)
    assert got.min() > 0 and got.max() < 1 and not torch.allclose(got.sum(1), torch.ones(4))  # not a softmax


def test_embed_images_takes_paths_pil_and_tensors_alike(saved):
    path, _, images = saved
    model = siglip.load(path)
    a = model.embed_images(images, batch_size=3)  # two batches
    b = model.embed_images([Image.open(p) for p in images])
    c = model.embed_images(torch.stack([model.preprocess(Image.open(p).convert("RGB")) for p in images]))
    assert a.shape == (4, model.dim) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # batches of 3 + 1 vs 4: float rounding only
    torch.testing.assert_close(a, c, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    assert model.embed_images(images[0]).shape == (1, model.dim)
    with pytest.raises(ValueError, match="broken.png"):
        (images[0].parent / "broken.png").write_bytes(b"not a png")
        model.embed_images([images[0].parent / "broken.png"])


def test_classify_is_the_zero_shot_classifier_with_sigmoid_probabilities(saved, tokenizer):
    path, net, images = saved
    model = siglip.load(path)
    labels, templates = ["red square", "green thing", "blue circle"], ["a photo of a {}.", "a {} on white"]
    probs = model.classify(images, labels, templates)
    cls = class_embeddings(net, tokenizer, labels, templates)  # the zero-shot evaluator's classifier
    zimg = model.embed_images(images)
    ref = torch.sigmoid(net.t_prime.exp().detach() * zimg @ cls.T + net.b.detach())
    torch.testing.assert_close(probs, ref, atol=1e-6, rtol=0)
    assert torch.equal(probs.argmax(1), (zimg @ cls.T).argmax(1))
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        model.classify(images, labels, ["a photo"])


def test_weights_without_a_tokenizer_load_for_images(saved, tmp_path):
    path, _, images = saved
    hf = tmp_path / "hf"
    convert_main([str(path), str(hf), "--to", "hf"])
    (hf / "spiece.model").unlink()
    (hf / "tokenizer.json").unlink()  # the export writes both files of the same vocabulary
    full, bare = siglip.load(path), siglip.load(hf)
    assert not bare.has_tokenizer and bare.fingerprint == full.fingerprint  # same weights, any format
    torch.testing.assert_close(bare.embed_images(images), full.embed_images(images), atol=1e-6, rtol=0)
    with pytest.raises(TokenizerMissing, match="tokenizer='spiece.model'.*--tokenizer"):
        bare.embed_texts(["a cat"])
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "spm.model").write_bytes(full.tokenizer.proto)
    given = siglip.load(hf, tokenizer=tmp_path / "tok" / "spm.model")
    torch.testing.assert_close(given.score(images, TEXTS), full.score(images, TEXTS), atol=1e-6, rtol=0)


def test_open_clip_bin_alone_embeds_images(tmp_path):
    from tests.test_convert import make_open_clip

    ref, path = make_open_clip(tmp_path)
    (path.parent / "spiece.model").unlink()
    model = siglip.load(path)
    pixels = torch.rand(2, 3, 28, 28) * 2 - 1
    with torch.no_grad():
        want = torch.nn.functional.normalize(ref.encode_image(pixels), dim=-1)
    torch.testing.assert_close(model.embed_images(pixels), want, atol=2e-5, rtol=0)
    with pytest.raises(TokenizerMissing):
        model.score(pixels, ["a cat"])


def test_dtype_and_fingerprint(saved, tmp_path):
    path, net, images = saved
    full, half = siglip.load(path), siglip.load(path, dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and half.fingerprint == full.fingerprint
    cos = (half.embed_images(images) * full.embed_images(images)).sum(1)
    assert cos.min() > 0.99
    with torch.no_grad():
        net.b.add_(1e-3)
    siglip.save_model(tmp_path / "other.pt", net, full.tokenizer, "bicubic")
    assert siglip.load(tmp_path / "other.pt").fingerprint != full.fingerprint
    assert Path(full.path) == path and "mu" in repr(full)
    moved = full.to(torch.bfloat16)  # chaining keeps the Model
    assert moved is full and full.dtype == torch.bfloat16 and full.embed_images(images).dtype == torch.float32
