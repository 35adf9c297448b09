"""One embedding path: every public embedding method of `siglip.api.Model` (encode_image,
encode_text, embed_images, embed_texts, score, classify, and calling it) runs the packed towers of
siglip.inference and gives the module's outputs; the module stays the way to train."""

from __future__ import annotations

import pytest
import torch

import siglip
from siglip import inference
from siglip.config import ModelConfig
from siglip.model import SigLIP

pytestmark = pytest.mark.skipif(
    inference.compute_dtype(torch.nn.Linear(2, 2).eval()) is None, reason="no oneDNN in this torch build"
)
ATOL = 1e-6  # fp32: the packed towers and the module differ only in summation order
TEXTS = ["a red square on white", "a photo of a cat", "two green triangles"]


@pytest.fixture
def model(tmp_path, tokenizer) -> siglip.Model:
    """A tiny model file loaded back as users get it, weights moved off their init (random biases)."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size)
    net = SigLIP(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    siglip.save_model(tmp_path / "m.pt", net, tokenizer, "bicubic")
    return siglip.load(tmp_path / "m.pt")


def pixels(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def packed_after(model: siglip.Model, call) -> set[str]:
    """Which towers have a packed copy after `call()` (none before): the path it took."""
    inference.forget(model)
    call()
    return {name for name in ("image", "text") if getattr(model.model, name) in inference._PACKED}


def test_encode_image_is_embed_images_and_the_module(model):
    x = pixels()
    assert packed_after(model, lambda: model.encode_image(x)) == {"image"}
    got = model.encode_image(x)
    assert got.shape == (4, model.dim) and got.dtype == torch.float32 and got.grad_fn is None
    with torch.no_grad():
        want = model.model.encode_image(x)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    torch.testing.assert_close(got, model.embed_images(x), rtol=0, atol=ATOL)  # prepared pixels alike
    # under inference mode (as embedding scripts call it) and with the module's other argument names
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_image(pixels=x), want, rtol=0, atol=ATOL)


def test_encode_text_and_the_call_take_the_packed_towers(model, tokenizer):
    ids = tokenizer(TEXTS)
    assert packed_after(model, lambda: model.encode_text(ids)) == {"text"}
    with torch.no_grad():
        want_img, want_txt = model.model(pixels(3), ids)
    torch.testing.assert_close(model.encode_text(ids), want_txt, rtol=0, atol=ATOL)
    torch.testing.assert_close(model.embed_texts(TEXTS), want_txt, rtol=0, atol=ATOL)
    assert packed_after(model, lambda: model(pixels(3), ids)) == {"image", "text"}
    zimg, ztxt = model(pixels(3), ids)
    torch.testing.assert_close(zimg, want_img, rtol=0, atol=ATOL)
    torch.testing.assert_close(ztxt, want_txt, rtol=0, atol=ATOL)


def test_score_and_classify_take_the_packed_towers_and_match_the_module(model, tokenizer):
    x = pixels(3)
    assert packed_after(model, lambda: model.score(x, TEXTS)) == {"image", "text"}
    assert packed_after(model, lambda: model.classify(x, ["cat", "dog"], templates=["{}"])) == {"image", "text"}
    with torch.no_grad():
        zimg, ztxt = model.model(x, tokenizer(TEXTS))
        want = torch.sigmoid(model.model.t * zimg @ ztxt.T + model.model.b)
        labels = model.model.encode_text(tokenizer(["cat", "dog"]))
        want_cls = torch.sigmoid(model.model.t * zimg @ labels.T + model.model.b)
    torch.testing.assert_close(model.score(x, TEXTS), want, rtol=0, atol=ATOL)
    torch.testing.assert_close(model.classify(x, ["cat", "dog"], templates=["{}"]), want_cls, rtol=0, atol=ATOL)


def test_gradients_take_the_module(model, tokenizer):
    """Pixels that require grad, or the module in training mode, run the module with autograd."""
    x = pixels(2).requires_grad_()
    assert packed_after(model, lambda: model.encode_image(x)) == set()
    model.encode_image(x).sum().backward()
    y = x.detach().clone().requires_grad_()
    model.model.encode_image(y).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=0)
    model.model.train()
    ids = tokenizer(TEXTS)
    assert packed_after(model, lambda: model.encode_text(ids)) == set()
    model.model.zero_grad(set_to_none=True)
    model.encode_text(ids).sum().backward()  # gradients reach the weights, as training needs
    assert model.model.text.token_embed.weight.grad is not None
