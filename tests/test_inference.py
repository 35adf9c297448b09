"""siglip.inference: the packed (oneDNN) towers give the module's outputs, follow weight changes,
and stand aside where they do not apply."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from siglip import inference
from siglip.config import ModelConfig, TowerConfig
from siglip.model import SigLIP
from siglip.transforms import naflex_preprocess

pytestmark = pytest.mark.skipif(
    inference.compute_dtype(torch.nn.Linear(2, 2).eval()) is None, reason="no oneDNN in this torch build"
)
BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
needs_bf16 = pytest.mark.skipif(not BF16, reason="this CPU has no oneDNN bf16 kernels (no AVX-512 bf16 / AMX)")


@torch.inference_mode(False)  # weights made inside a test under inference mode are ordinary tensors
def small_model(gelu: str = "tanh", naflex: bool = False, text_head: bool = True, dtype=torch.float32) -> SigLIP:
    cfg = ModelConfig(
        variant="test",
        image=TowerConfig(48, 2, 80, 3),  # width, depth, MLP, heads: odd sizes on purpose
        text=TowerConfig(48, 3, 72, 4),
        image_size=20,
        patch_size=4,
        text_length=7,
        vocab_size=50,
        gelu=gelu,
        naflex=naflex,
        text_head=text_head,
    )
    torch.manual_seed(0)
    model = SigLIP(cfg).eval()
    with torch.no_grad():  # the init leaves biases at 0 and the probe small: random everywhere
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype)


def inputs(n: int = 5):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 20, 20, generator=g) * 2 - 1, torch.randint(0, 50, (n, 7), generator=g)


@pytest.mark.parametrize("gelu", ["tanh", "exact"])
@pytest.mark.parametrize("text_head", [True, False])
@torch.inference_mode()
def test_packed_fp32_equals_module(gelu, text_head):
    model = small_model(gelu, text_head=text_head)
    pixels, ids = inputs()
    assert inference.packed_tower(model.image) is not model.image  # the packed path really runs
    torch.testing.assert_close(inference.encode_image(model, pixels), model.encode_image(pixels), rtol=0, atol=2e-6)
    torch.testing.assert_close(inference.encode_text(model, ids), model.encode_text(ids), rtol=0, atol=2e-6)


@needs_bf16
@torch.inference_mode()
def test_packed_bf16_autocast_matches_module_under_autocast():
    model = small_model()
    pixels, ids = inputs(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert inference.compute_dtype(model.image) == torch.bfloat16
        got = inference.encode_image(model, pixels), inference.encode_text(model, ids)
        want = model.encode_image(pixels), model.encode_text(ids)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == torch.bfloat16
        # the two differ only in bf16 rounding (the GELU inside the product sees fp32); unit rows
        assert (g.float() - w.float()).abs().max() < 2e-2
        assert torch.nn.functional.cosine_similarity(g.float(), w.float()).min() > 0.999


@needs_bf16
@torch.inference_mode()
def test_packed_bf16_weights():
    model = small_model(dtype=torch.bfloat16)
    pixels, _ = inputs()
    assert inference.compute_dtype(model.image) == torch.bfloat16
    got, want = inference.encode_image(model, pixels.bfloat16()), model.encode_image(pixels.bfloat16())
    assert torch.nn.functional.cosine_similarity(got.float(), want.float()).min() > 0.999


@pytest.mark.skipif(BF16, reason="this CPU has oneDNN bf16 kernels")
@torch.inference_mode()
def test_bf16_without_onednn_kernels_runs_the_module():
    model = small_model(dtype=torch.bfloat16)
    pixels, _ = inputs()
    assert inference.compute_dtype(model.image) is None  # the module itself runs: same output, bit for bit
    torch.testing.assert_close(
        inference.encode_image(model, pixels.bfloat16()), model.encode_image(pixels.bfloat16()), rtol=0, atol=0
    )


@torch.inference_mode()
def test_naflex_with_padding_equals_module():
    model = small_model(naflex=True)
    images = [Image.new("RGB", (30, 11), (200, 40, 10)), Image.new("RGB", (9, 17), (20, 90, 250))]
    batch = naflex_preprocess(images, patch_size=4, max_num_patches=20)
    assert not batch.mask.all()  # padding the attention must ignore
    torch.testing.assert_close(inference.encode_image(model, batch), model.encode_image(batch), rtol=0, atol=2e-6)


@torch.inference_mode()
def test_repacks_when_the_weights_change_and_keeps_state_dict():
    model = small_model()
    pixels, _ = inputs()
    keys = list(model.state_dict())
    first = inference.encode_image(model, pixels)
    assert inference.packed_tower(model.image) is inference.packed_tower(model.image)  # kept between calls
    with torch.inference_mode(False), torch.no_grad():
        model.image.head.mlp.fc2.weight.mul_(1.5)  # an optimizer step changes weights in place
    after = inference.encode_image(model, pixels)
    assert not torch.allclose(first, after)
    torch.testing.assert_close(after, model.encode_image(pixels), rtol=0, atol=2e-6)
    model.load_state_dict(small_model(gelu="exact").state_dict())  # load_state_dict copies in place too
    torch.testing.assert_close(inference.encode_image(model, pixels), model.encode_image(pixels), rtol=0, atol=2e-6)
    assert list(model.state_dict()) == keys  # the packed copy is held outside the module


def test_module_itself_where_packing_does_not_apply():
    model = small_model()
    assert inference.packed_tower(model.train().image) is model.image  # training: dropout, gradients
    assert inference.packed_tower(model.eval().half().image) is model.image  # fp16: no oneDNN kernel here
    with pytest.raises(AttributeError):  # not a SigLIP nor a known wrapper of one: its own encode_image
        inference.encode_image(torch.nn.Sequential(model), inputs()[0])


@torch.inference_mode()
def test_wrapped_models_embed_through_the_packed_towers():
    from siglip.api import Model
    from siglip.compile import CompiledOrEager

    model = small_model()
    pixels, ids = inputs()
    want = model.encode_image(pixels), model.encode_text(ids)
    for wrapped in (Model(model, None, None), CompiledOrEager(model)):
        got = inference.encode_image(wrapped, pixels), inference.encode_text(wrapped, ids)
        torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
    assert model.image in inference._PACKED and model.text in inference._PACKED
    inference.forget(Model(model, None, None))
    assert model.image not in inference._PACKED and model.text not in inference._PACKED
