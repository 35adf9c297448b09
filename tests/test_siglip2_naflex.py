"""NaFlex (SigLIP 2 Siglip2Model): our preprocessing gives transformers' Siglip2ImageProcessor's
pixel values, masks and spatial shapes, and our model gives Siglip2Model's embeddings on them, for
images of several aspect ratios in one batch and a max_num_patches that is not a square."""

import numpy as np
import pytest
import torch
from PIL import Image

from siglip.config import ModelConfig, TowerConfig
from siglip.interop.hf import hf_rules
from siglip.interop.rules import apply_rules
from siglip.model import SigLIP
from siglip.naflex import NaFlexPatches, resize_positions
from siglip.tokenizer import Tokenizer
from siglip.transforms import naflex_preprocess, naflex_size
from tests.siglip2_helpers import gemma_proto

transformers = pytest.importorskip("transformers")
torch.set_num_threads(2)
ATOL = 1e-5
PATCH, MAX_PATCHES, GRID = 4, 22, 5  # 22 patches: not a square; a 5x5 learned position grid
SIZES = [(37, 23), (13, 50), (16, 16), (70, 9), (8, 3), (200, 120)]  # (width, height) of the images


def images(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


def hf_siglip2():
    tower = dict(hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=3)
    cfg = transformers.Siglip2Config(
        text_config=dict(tower, vocab_size=330, max_position_embeddings=12),
        vision_config=dict(tower, patch_size=PATCH, num_patches=GRID * GRID),
    )
    torch.manual_seed(0)
    model = transformers.Siglip2Model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # peers init many tensors to 0 or 1: random everywhere
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def ours_from(hf) -> SigLIP:
    cfg = ModelConfig(
        variant="hf",
        image=TowerConfig(48, 2, 72, 3),
        text=TowerConfig(48, 2, 72, 3),
        image_size=GRID * PATCH,
        patch_size=PATCH,
        text_length=12,
        vocab_size=330,
        naflex=True,
    )
    model = SigLIP(cfg).eval()
    state = {k: v for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(apply_rules(hf_rules(cfg), state, shapes, "Siglip2Model"))
    return model


def test_naflex_size_rule_matches_processor():
    from transformers.models.siglip2.image_processing_siglip2 import get_image_size_for_max_num_patches

    rng = np.random.default_rng(0)
    for _ in range(150):
        h, w = (int(x) for x in rng.integers(1, 900, 2))
        patch, most = int(rng.choice([4, 14, 16])), int(rng.integers(1, 1100))
        assert naflex_size(h, w, patch, most) == get_image_size_for_max_num_patches(h, w, patch, most)


def test_preprocessing_matches_processor():
    proc = transformers.Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=MAX_PATCHES)
    theirs = proc(images(), return_tensors="pt")
    ours = naflex_preprocess(images(), PATCH, MAX_PATCHES)
    assert ours.patches.shape == theirs["pixel_values"].shape == (len(SIZES), MAX_PATCHES, 3 * PATCH * PATCH)
    assert torch.equal(ours.spatial_shapes, theirs["spatial_shapes"].long())
    assert torch.equal(ours.mask, theirs["pixel_attention_mask"].bool())
    assert len(set(map(tuple, ours.spatial_shapes.tolist()))) >= 4  # several aspect ratios
    torch.testing.assert_close(ours.patches, theirs["pixel_values"], atol=1e-6, rtol=0)


def test_position_resize_is_bilinear_antialiased():
    """Against the naive definition: each image's grid resized on its own with F.interpolate."""
    pos = torch.randn(GRID * GRID, 8)
    shapes = torch.tensor([[2, 7], [5, 5], [9, 1], [2, 7]])
    out = resize_positions(pos, GRID, shapes, 26)
    for i, (h, w) in enumerate(shapes.tolist()):
        img = pos.reshape(1, GRID, GRID, 8).permute(0, 3, 1, 2)
        ref = torch.nn.functional.interpolate(img, (h, w), mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(out[i, : h * w], ref[0].flatten(1).T)
        assert (out[i, h * w :] == 0).all()
    with pytest.raises(ValueError, match="do not fit 16 patches"):
        resize_positions(pos, GRID, torch.tensor([[4, 5]]), 16)


def test_embeddings_match_siglip2model():
    hf = hf_siglip2()
    model = ours_from(hf)
    inputs = transformers.Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=MAX_PATCHES)(
        images(), return_tensors="pt"
    )
    ids = Tokenizer(gemma_proto(), 12, kind="gemma")(["a photo of a cat", "Two green triangles!", ""])
    with torch.no_grad():
        out = hf(input_ids=ids, **inputs)
        batch = naflex_preprocess(images(), PATCH, MAX_PATCHES)
        zimg, ztxt = model(batch, ids)
        alone = model.encode_image(naflex_preprocess(images()[:1], PATCH, MAX_PATCHES))
    torch.testing.assert_close(zimg, out.image_embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(ztxt, out.text_embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(model.logits(zimg, ztxt), out.logits_per_image, atol=1e-4, rtol=0)
    torch.testing.assert_close(alone[0], zimg[0], atol=ATOL, rtol=0)  # padding never leaks in
    from siglip.model import set_fused_qkv

    set_fused_qkv(model, True)  # the fused q/k/v switch masks the same way
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(batch), out.image_embeds, atol=ATOL, rtol=0)


def test_naflex_inputs_are_checked():
    hf = hf_siglip2()
    model = ours_from(hf)
    with pytest.raises(ValueError, match="NaFlex image tower takes patches"):
        model.encode_image(torch.zeros(1, 3, 20, 20))
    batch = naflex_preprocess(images()[:2], PATCH, MAX_PATCHES)
    assert isinstance(batch[:1], NaFlexPatches) and len(batch[:1]) == 1
    patches, mask, shapes = batch.to("cpu")
    assert patches.shape == batch.shape and mask.dtype == torch.bool and shapes.shape == (2, 2)


def test_model_file_keeps_naflex_preprocessing(tmp_path):
    import siglip
    from siglip.naflex import stack_images

    model = ours_from(hf_siglip2())
    tok = Tokenizer(gemma_proto(), 12, kind="gemma")
    siglip.save_model(tmp_path / "m.pt", model, tok, "bilinear", max_num_patches=MAX_PATCHES)
    loaded = siglip.load(tmp_path / "m.pt")
    assert loaded.tokenizer.kind == "gemma" and loaded.config.naflex
    batch = stack_images([loaded.preprocess(im) for im in images()])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.encode_image(batch), model.encode_image(naflex_preprocess(images(), PATCH, MAX_PATCHES))
        )


def test_patch_layout_matches_a_conv():
    """Linear(patchify(x)) == Conv2d(x) with the kernel `unpatchify_weight` gives: the (row, column,
    channel) flattening of the processor."""
    from siglip.naflex import patchify, unpatchify_weight

    x, w = torch.randn(3, 8, 12), torch.randn(5, 3 * PATCH * PATCH)
    conv = torch.nn.functional.conv2d(x[None], unpatchify_weight(w), stride=PATCH)  # (1, 5, 2, 3)
    torch.testing.assert_close(patchify(x, PATCH) @ w.T, conv[0].flatten(1).T)
