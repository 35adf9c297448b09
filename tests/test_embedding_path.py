"""One embedding path: every public embedding method of `siglip.api.Model` (encode_image,
encode_text, embed_images, embed_texts, score, classify, and calling it) runs the packed towers of
siglip.inference where autograd cannot need the result, and gives the module's outputs; where it can
(grad mode on and a weight or input that requires grad, eval mode or not) the module runs, so
gradients reach every parameter as they do through the module."""

from __future__ import annotations

import pytest
import torch

import siglip
from siglip import inference
from siglip.config import ModelConfig
from siglip.loss import sigmoid_loss
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
    with torch.no_grad():
        assert packed_after(model, lambda: model.encode_image(x)) == {"image"}
        got = model.encode_image(x)
        want = model.model.encode_image(x)
    assert got.shape == (4, model.dim) and got.dtype == torch.float32 and got.grad_fn is None
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    torch.testing.assert_close(got, model.embed_images(x), rtol=0, atol=ATOL)  # prepared pixels alike
    # under inference mode (as embedding scripts call it) and with the module's other argument names
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_image(pixels=x), want, rtol=0, atol=ATOL)


@torch.no_grad()
def test_encode_text_and_the_call_take_the_packed_towers(model, tokenizer):
    ids = tokenizer(TEXTS)
    assert packed_after(model, lambda: model.encode_text(ids)) == {"text"}
    want_img, want_txt = model.model(pixels(3), ids)
    torch.testing.assert_close(model.encode_text(ids), want_txt, rtol=0, atol=ATOL)
    torch.testing.assert_close(model.embed_texts(TEXTS), want_txt, rtol=0, atol=ATOL)
    assert packed_after(model, lambda: model(pixels(3), ids)) == {"image", "text"}
    zimg, ztxt = model(pixels(3), ids)
    torch.testing.assert_close(zimg, want_img, rtol=0, atol=ATOL)
    torch.testing.assert_close(ztxt, want_txt, rtol=0, atol=ATOL)


def test_frozen_towers_take_the_packed_path_with_grad_mode_on(model, tokenizer):
    """No weight requires grad (a frozen feature extractor): nothing to differentiate, packed path."""
    model.model.requires_grad_(False)
    ids = tokenizer(TEXTS)
    assert packed_after(model, lambda: model(pixels(3), ids)) == {"image", "text"}
    zimg, ztxt = model(pixels(3), ids)
    assert zimg.grad_fn is None and ztxt.grad_fn is None
    model.model.text.requires_grad_(True)  # one tower trained (a text adapter): that tower runs the module
    assert packed_after(model, lambda: model(pixels(3), ids)) == {"image"}


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


def loss_grads(encode_image, encode_text, net, x, ids) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of the sigmoid loss of (encode_image(x), encode_text(ids))."""
    net.zero_grad(set_to_none=True)
    sigmoid_loss(encode_image(x), encode_text(ids), net.t, net.b).backward()
    return {name: p.grad for name, p in net.named_parameters()}


@pytest.mark.parametrize("how", ["encode", "call"])
def test_eval_mode_gradients_equal_the_module(model, tokenizer, how):
    """Fine-tuning or probing through `siglip.load(...)` as returned (eval mode, grad mode on): every
    parameter gets the module's gradient, to 1e-6. Before: encode_image/encode_text ran the packed
    towers (no autograd graph) in eval mode, so `zimg.requires_grad` was False and only t and b got a
    gradient (the towers' grads were None)."""
    assert not model.model.training
    x, ids = pixels(4), tokenizer(TEXTS + ["a blue circle"])
    if how == "call":
        zi, zt = model(x, ids)
        assert zi.requires_grad and zt.requires_grad
        got = loss_grads(lambda x: zi, lambda ids: zt, model.model, x, ids)
    else:
        got = loss_grads(model.encode_image, model.encode_text, model.model, x, ids)
    want = loss_grads(model.model.encode_image, model.model.encode_text, model.model, x, ids)
    missing = sorted(name for name, g in got.items() if g is None and want[name] is not None)
    assert not missing, f"{len(missing)} of {len(got)} parameters got no gradient: {missing[:4]}"
    for name, g in want.items():
        if g is not None:
            torch.testing.assert_close(got[name], g, rtol=0, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}")
