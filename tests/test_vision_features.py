"""`Model.image_features` gives transformers' `hidden_states`, `last_hidden_state` and `pooler_output`
of SiglipVisionModel and Siglip2VisionModel (NaFlex, on the valid patches), loaded from our
`--to hf --vision-only` export, which transformers reads with no unused or missing weight."""

import logging

import pytest
import torch

import siglip
from siglip.config import ModelConfig, TowerConfig
from siglip.interop.__main__ import main as convert_main
from siglip.model import SigLIP
from siglip.naflex import stack_images
from tests.siglip2_helpers import write_gemma_tokenizer
from tests.test_convert import randomize, spm_tokenizer
from tests.test_siglip2_naflex import MAX_PATCHES, PATCH, hf_siglip2, images

transformers = pytest.importorskip("transformers")
torch.set_num_threads(2)
ATOL = 1e-5
LAYERS = (-1, -2, 0)


class Records(logging.Handler):
    """transformers' own log records (its library logger does not propagate to the root)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load_logged(cls, folder):
    """`cls.from_pretrained(folder)` and the warnings transformers logged about its weights."""
    records, logger = Records(), logging.getLogger("transformers")
    logger.addHandler(records)
    try:
        model = cls.from_pretrained(folder).eval()
    finally:
        logger.removeHandler(records)
    words = ("not used", "unused", "newly initialized", "missing", "unexpected", "not initialized")
    return model, [m for m in records.messages if any(w in m.lower() for w in words)]


def fixed_model(tmp_path):
    cfg = ModelConfig(
        variant="hf",
        image=TowerConfig(48, 3, 72, 3),
        text=TowerConfig(48, 2, 72, 3),
        image_size=32,
        patch_size=8,
        text_length=16,
        vocab_size=64,
    )
    torch.manual_seed(0)
    model = SigLIP(cfg).eval()
    randomize(model, 3)
    siglip.save_model(tmp_path / "ours.pt", model, spm_tokenizer(16), resample="bilinear")
    return siglip.load(tmp_path / "ours.pt")


def check_features(ours, hf, inputs, hf_inputs, mask=None):
    """Every checked layer, post-norm and pooled against transformers; `mask` picks the valid tokens."""
    with torch.no_grad():
        out = hf(**hf_inputs, output_hidden_states=True)
        valid = (lambda x: x) if mask is None else (lambda x: x[mask])
        for layer in LAYERS:
            tokens, m = ours.image_features(inputs, layer=layer)
            torch.testing.assert_close(valid(tokens), valid(out.hidden_states[layer]), atol=ATOL, rtol=0)
        torch.testing.assert_close(
            valid(ours.image_features(inputs, post_norm=True).tokens), valid(out.last_hidden_state), atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            ours.image_features(inputs, pooled=True).tokens, out.pooler_output, atol=ATOL, rtol=0
        )
    assert m.dtype == torch.bool and m.shape == tokens.shape[:2]
    return out


def test_fixed_resolution_features_match_siglip_vision_model(tmp_path):
    ours = fixed_model(tmp_path)
    convert_main([str(tmp_path / "ours.pt"), str(tmp_path / "vision"), "--to", "hf", "--vision-only"])
    hf, warnings = load_logged(transformers.SiglipVisionModel, tmp_path / "vision")
    assert warnings == []
    assert not (tmp_path / "vision/spiece.model").exists()
    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    out = check_features(ours, hf, pixels, {"pixel_values": pixels})
    assert len(out.hidden_states) == 4  # embeddings + 3 blocks: layer -2 is block 2, not the embeddings
    # a fixed-resolution mask is all True; the pooled vector is the embedding before its L2 norm
    assert ours.image_features(pixels).mask.all()
    pooled = ours.image_features(pixels, pooled=True).tokens
    torch.testing.assert_close(
        torch.nn.functional.normalize(pooled, dim=-1), ours.embed_images(pixels), atol=1e-6, rtol=0
    )
    # the whole-model export loaded as a vision model: transformers does warn (the capture works)
    convert_main([str(tmp_path / "ours.pt"), str(tmp_path / "full"), "--to", "hf"])
    assert load_logged(transformers.SiglipVisionModel, tmp_path / "full")[1]


def test_naflex_features_match_siglip2_vision_model(tmp_path):
    hf_siglip2().save_pretrained(tmp_path / "hf")
    write_gemma_tokenizer(tmp_path / "hf", 12)
    transformers.Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=MAX_PATCHES).save_pretrained(tmp_path / "hf")
    ours = siglip.load(tmp_path / "hf")
    convert_main([str(tmp_path / "hf"), str(tmp_path / "vision"), "--to", "hf", "--vision-only"])
    hf, warnings = load_logged(transformers.Siglip2VisionModel, tmp_path / "vision")
    assert warnings == []
    inputs = transformers.Siglip2ImageProcessor.from_pretrained(tmp_path / "vision")(images(), return_tensors="pt")
    batch = stack_images([ours.preprocess(im) for im in images()])
    mask = batch.mask.bool()
    assert torch.equal(mask, inputs.pixel_attention_mask.bool()) and not mask.all()  # padded images
    check_features(ours, hf, batch, dict(inputs), mask)
    assert torch.equal(ours.image_features(batch).mask, mask)
    # PIL images go through the model's own preprocessing
    torch.testing.assert_close(ours.image_features(images())[0][mask], ours.image_features(batch)[0][mask])


def test_features_keep_the_callers_grad_mode_and_check_layers(tmp_path):
    ours = fixed_model(tmp_path)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    assert ours.image_features(pixels, layer=-2).tokens.requires_grad  # a VLM can train through it
    with torch.no_grad():
        assert not ours.image_features(pixels).tokens.requires_grad
    assert ours.image_features(pixels[0]).tokens.shape == (1, 16, 48)
    for kwargs, msg in [
        (dict(layer=4), "out of range"),
        (dict(layer=-5), "out of range"),
        (dict(layer=-2, pooled=True), "last block"),
        (dict(layer=1, post_norm=True), "last block"),
    ]:
        with pytest.raises(ValueError, match=msg):
            ours.image_features(pixels, **kwargs)
    assert ours.image_features(pixels, layer=3).tokens.shape == (2, 16, 48)  # 3 == -1
