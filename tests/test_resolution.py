"""A fixed-resolution model at another image size: `siglip.load(path, image_size=S)` gives
transformers' `interpolate_pos_encoding=True` outputs on our HF export; fine-tuning resizes as
big_vision's `resample_posemb` (scipy.ndimage.zoom, order 1) does; the new size is saved; a NaFlex
model refuses, saying why."""

import numpy as np
import pytest
import torch

import siglip
from siglip.interop import load_pretrained
from siglip.interop.__main__ import main as convert_main
from siglip.resolution import resize_pos_embed
from siglip.train.args import parse_train_args
from tests.test_vision_features import fixed_model

torch.set_num_threads(2)
ATOL = 1e-5


@pytest.mark.parametrize("grid", [7, 3])  # up from 4x4 and down
def test_big_vision_resample_is_scipy_zoom_order_1(grid):
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    pos = torch.randn(1, 16, 5, dtype=torch.float64)
    ref = scipy_ndimage.zoom(pos.reshape(4, 4, 5).numpy(), (grid / 4, grid / 4, 1), order=1)  # resample_posemb
    out = resize_pos_embed(pos, grid, "big_vision")
    np.testing.assert_allclose(out.reshape(grid, grid, 5).numpy(), ref, atol=1e-6, rtol=0)
    # transformers' bicubic is another resampling: which one a use takes matters
    assert (resize_pos_embed(pos, grid, "transformers") - out).abs().max() > 1e-2


@pytest.mark.parametrize("size", [48, 24])  # 4x4 grid of 8 px patches -> 6x6 and 3x3
def test_load_at_other_size_matches_transformers_interpolate_pos_encoding(tmp_path, size):
    transformers = pytest.importorskip("transformers")
    fixed_model(tmp_path)  # ours.pt at 32 px
    convert_main([str(tmp_path / "ours.pt"), str(tmp_path / "hf"), "--to", "hf"])
    hf = transformers.SiglipModel.from_pretrained(tmp_path / "hf").eval()
    ours = siglip.load(tmp_path / "ours.pt", image_size=size)
    assert ours.config.image_size == size and ours.model.image.pos_embed.shape[1] == (size // 8) ** 2
    pixels = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        ref = hf.vision_model(pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True)
        zref = torch.nn.functional.normalize(ref.pooler_output, dim=-1)
        torch.testing.assert_close(ours.embed_images(pixels), zref, atol=ATOL, rtol=0)
        torch.testing.assert_close(ours.image_features(pixels, layer=0).tokens, ref.hidden_states[0], atol=ATOL, rtol=0)
    # the preprocessing follows: a PIL image is resized to the new size
    from PIL import Image

    assert ours.preprocess(Image.new("RGB", (50, 30))).shape == (3, size, size)


def test_new_size_is_saved(tmp_path):
    ours = fixed_model(tmp_path)
    big = siglip.load(tmp_path / "ours.pt", image_size=48)
    siglip.save_model(tmp_path / "big.pt", big.model, big.tokenizer, resample="bilinear")
    convert_main([str(tmp_path / "ours.pt"), str(tmp_path / "big2.pt"), "--to", "siglip", "--image-size", "48"])
    pixels = torch.rand(2, 3, 48, 48) * 2 - 1
    for path in ("big.pt", "big2.pt"):
        back = siglip.load(tmp_path / path)
        assert back.config.image_size == 48 and "48px" in repr(back)
        torch.testing.assert_close(back.embed_images(pixels), big.embed_images(pixels), atol=1e-6, rtol=0)
    assert ours.config.image_size == 32  # the file read is not changed


def test_finetune_image_size_from_the_command_line(tmp_path):
    fixed_model(tmp_path)
    argv = ["--config", "configs/demo_config.py", "--pretrained-path", str(tmp_path / "ours.pt")]
    run = parse_train_args(argv + ["--config.model.image_size=48"])
    assert run.config.train.finetune_image_size == 48
    payload = load_pretrained(tmp_path / "ours.pt", image_size=run.config.train.finetune_image_size)
    old = siglip.load(tmp_path / "ours.pt").model.image.pos_embed
    assert payload["model_config"]["image_size"] == 48
    torch.testing.assert_close(payload["state_dict"]["image.pos_embed"], resize_pos_embed(old, 6, "big_vision"))
    with pytest.raises(ValueError, match="disagree"):
        parse_train_args(argv + ["--config.model.image_size=48", "--config.train.finetune_image_size=64"])
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        load_pretrained(tmp_path / "ours.pt", image_size=44)
    assert parse_train_args(["--config", "configs/demo_config.py"]).config.train.finetune_image_size == 0


def test_naflex_model_says_it_needs_no_image_size(tmp_path):
    pytest.importorskip("transformers")
    from tests.siglip2_helpers import write_gemma_tokenizer
    from tests.test_siglip2_naflex import hf_siglip2

    hf_siglip2().save_pretrained(tmp_path / "hf")
    write_gemma_tokenizer(tmp_path / "hf", 12)
    with pytest.raises(ValueError, match="NaFlex model takes images at their own size"):
        siglip.load(tmp_path / "hf", image_size=64)
    assert siglip.load(tmp_path / "hf").config.naflex  # without image_size: fine
