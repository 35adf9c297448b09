"""SigLIP 2 checkpoints in every format, against the peers' own code with random weights: Hugging
Face SiglipModel with a Gemma tokenizer and per-tower activations, Siglip2Model (NaFlex) with its
processor, open_clip's ViT-*-SigLIP2 (GELU differs per tower), a big_vision .npz with the Gemma
vocabulary; export back to Hugging Face; clear errors for what is not supported."""

import json

import numpy as np
import pytest
import torch

import siglip
from siglip.naflex import stack_images
from siglip.tokenizer import Tokenizer
from tests.siglip2_helpers import gemma_proto, write_gemma_tokenizer
from tests.test_siglip2_naflex import MAX_PATCHES, PATCH, hf_siglip2, images

transformers = pytest.importorskip("transformers")
torch.set_num_threads(2)
ATOL = 1e-5
L = 12
TEXTS = ["a photo of a cat", "Two green triangles!", "über café 2024", ""]


def randomize(module: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def hf_siglip_gemma(folder, vision_act="gelu", text_act="gelu_pytorch_tanh"):
    """A fixed-resolution SigLIP 2 folder as google/siglip2-*-patch16-224 are: SiglipModel, Gemma
    tokenizer files, SiglipImageProcessor with bilinear resize. Towers of different sizes and GELUs."""
    cfg = transformers.SiglipConfig(
        text_config=dict(
            hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
            vocab_size=330, max_position_embeddings=L, projection_size=36, hidden_act=text_act,
        ),
        vision_config=dict(
            hidden_size=36, intermediate_size=60, num_hidden_layers=3, num_attention_heads=3,
            image_size=20, patch_size=4, hidden_act=vision_act,
        ),
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.SiglipModel(cfg).eval()
    randomize(model)
    model.save_pretrained(folder)
    write_gemma_tokenizer(folder, L)
    transformers.SiglipImageProcessor(size={"height": 20, "width": 20}, resample=2).save_pretrained(folder)
    return model


def hf_ids(folder, texts):
    tok = transformers.AutoTokenizer.from_pretrained(folder, padding_side="right")
    return torch.tensor(tok([t.lower() for t in texts], padding="max_length", max_length=L, truncation=True).input_ids)


def check_fixed(ours, hf, folder):
    ids = ours.tokenizer(TEXTS)
    assert torch.equal(ids, hf_ids(folder, TEXTS))
    pixels = transformers.SiglipImageProcessor.from_pretrained(folder)(images(), return_tensors="pt").pixel_values
    # our fixed-resolution transform resizes with PIL, transformers 5 with torchvision on uint8: at most
    # one level of 255 apart (bilinear)
    assert (stack_images([ours.preprocess(im) for im in images()]) - pixels).abs().max() <= 1 / 127.5 + 1e-6
    with torch.no_grad():
        zimg, ztxt = ours(pixels, ids)
        out = hf(input_ids=ids, pixel_values=pixels)
    torch.testing.assert_close(zimg, out.image_embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(ztxt, out.text_embeds, atol=ATOL, rtol=0)


def check_naflex(ours, hf, folder):
    ids = ours.tokenizer(TEXTS)
    assert torch.equal(ids, hf_ids(folder, TEXTS))
    inputs = transformers.Siglip2ImageProcessor.from_pretrained(folder)(images(), return_tensors="pt")
    batch = stack_images([ours.preprocess(im) for im in images()])
    assert batch.patches.shape[1] == MAX_PATCHES and torch.equal(batch.spatial_shapes, inputs.spatial_shapes.long())
    with torch.no_grad():
        zimg, ztxt = ours(batch, ids)
        out = hf(input_ids=ids, **inputs)
    torch.testing.assert_close(zimg, out.image_embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(ztxt, out.text_embeds, atol=ATOL, rtol=0)
    # the model API: PIL images of any aspect ratio as they are, batched in twos
    torch.testing.assert_close(ours.embed_images(images(), batch_size=2), out.image_embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.embed_texts(TEXTS), out.text_embeds, atol=ATOL, rtol=0)


def export(model_path, dst):
    from siglip.interop.__main__ import main as convert_main

    convert_main([str(model_path), str(dst), "--to", "hf"])
    return dst


# --------------------------------------------------------------------------------------------------
# Hugging Face


def test_hf_siglip_with_gemma_tokenizer(tmp_path):
    hf = hf_siglip_gemma(tmp_path / "hf")
    ours = siglip.load(tmp_path / "hf")
    assert ours.tokenizer.kind == "gemma" and ours.tokenizer.pad_id == 0
    assert (ours.config.image.gelu, ours.config.text.gelu) == ("exact", "tanh")
    check_fixed(ours, hf, tmp_path / "hf")
    # ours -> Hugging Face -> transformers: same model, tokenizer and processor
    export(tmp_path / "hf", tmp_path / "export")
    back = transformers.SiglipModel.from_pretrained(tmp_path / "export").eval()
    check_fixed(ours, back, tmp_path / "export")
    assert json.loads((tmp_path / "export/config.json").read_text())["vision_config"]["hidden_act"] == "gelu"


def test_hf_siglip2_naflex_folder_and_export(tmp_path):
    hf = hf_siglip2()
    hf.save_pretrained(tmp_path / "hf")
    write_gemma_tokenizer(tmp_path / "hf", 12)
    transformers.Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=MAX_PATCHES).save_pretrained(tmp_path / "hf")
    ours = siglip.load(tmp_path / "hf")
    assert ours.config.naflex and ours.tokenizer.kind == "gemma"
    check_naflex(ours, hf, tmp_path / "hf")
    export(tmp_path / "hf", tmp_path / "export")
    back = transformers.Siglip2Model.from_pretrained(tmp_path / "export").eval()
    check_naflex(ours, back, tmp_path / "export")
    # and through our own model file
    from siglip.interop.__main__ import main as convert_main

    convert_main([str(tmp_path / "hf"), str(tmp_path / "m.pt"), "--to", "siglip"])
    check_naflex(siglip.load(tmp_path / "m.pt"), hf, tmp_path / "hf")


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda c: c.update(model_type="clip"), "model_type 'clip' is not supported"),
        (lambda c: c["vision_config"].update(hidden_act="relu"), "vision_config.hidden_act='relu'"),
        (lambda c: c["text_config"].update(layer_norm_eps=1e-5), "text_config.layer_norm_eps"),
        (lambda c: c["vision_config"].update(num_channels=1), "vision_config.num_channels"),
        (lambda c: c["vision_config"].update(vision_use_head=False), "vision_config.vision_use_head"),
    ],
)
def test_unsupported_hf_options_name_the_field(tmp_path, edit, field):
    hf_siglip_gemma(tmp_path / "hf")
    cfg_file = tmp_path / "hf/config.json"
    cfg = json.loads(cfg_file.read_text())
    edit(cfg)
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=field.replace("(", r"\(")):
        siglip.load(tmp_path / "hf")


def test_siglip2_grid_must_be_square(tmp_path):
    hf_siglip2().save_pretrained(tmp_path / "hf")
    write_gemma_tokenizer(tmp_path / "hf", 12)
    cfg = json.loads((tmp_path / "hf/config.json").read_text())
    cfg["vision_config"]["num_patches"] = 24
    (tmp_path / "hf/config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="num_patches=24 is not a square"):
        siglip.load(tmp_path / "hf")


# --------------------------------------------------------------------------------------------------
# open_clip


def make_open_clip_siglip2(folder):
    """ViT-B-16-SigLIP2 as open_clip builds it (exact-GELU timm trunk, tanh-GELU text tower, Gemma
    tokenizer folder), shrunk through timm's and open_clip's own kwargs."""
    open_clip = pytest.importorskip("open_clip")
    timm = pytest.importorskip("timm")
    text_cfg = dict(
        context_length=L, vocab_size=330, width=40, heads=4, layers=2, mlp_ratio=1.5, no_causal_mask=True,
        proj_bias=True, pool_type="last", norm_kwargs={"eps": 1e-6}, act_kwargs={"approximate": "tanh"},
    )  # fmt: skip
    vision_cfg = dict(image_size=224, timm_model_name="vit_base_patch16_siglip_224", timm_pool="map", timm_proj="none")
    with torch.device("meta"):
        model = open_clip.CustomTextCLIP(embed_dim=128, vision_cfg=vision_cfg, text_cfg=text_cfg, init_logit_bias=-10)
    torch.manual_seed(0)
    model.text = open_clip.model._build_text_tower(128, text_cfg)
    model.logit_scale = torch.nn.Parameter(torch.tensor(2.3))
    model.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))
    model.visual.trunk = timm.create_model(
        "vit_base_patch16_siglip_224", img_size=20, patch_size=4, embed_dim=128, depth=2, num_heads=2,
        mlp_ratio=1.5, num_classes=0, global_pool="map",
    )  # fmt: skip
    model.eval()
    randomize(model)
    folder.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    cfg = {
        "model_cfg": {"embed_dim": 128, "vision_cfg": vision_cfg, "text_cfg": {**text_cfg, "hf_tokenizer_name": "x"}}
    }
    cfg["preprocess_cfg"] = {"interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    write_gemma_tokenizer(folder, L, padding_side="right")
    return model


def test_open_clip_siglip2_per_tower_gelu(tmp_path):
    ref = make_open_clip_siglip2(tmp_path / "oc")
    ours = siglip.load(tmp_path / "oc")
    assert (ours.config.image.gelu, ours.config.text.gelu) == ("exact", "tanh") and ours.tokenizer.kind == "gemma"
    from open_clip.tokenizer import HFTokenizer

    words = ["a photo of a cat", "two green triangles", "über café 2024"]  # open_clip also deletes punctuation
    assert torch.equal(
        HFTokenizer(str(tmp_path / "oc"), context_length=L, clean="canonicalize")(words), ours.tokenizer(words)
    )
    pixels, ids = torch.rand(3, 3, 20, 20) * 2 - 1, ours.tokenizer(TEXTS[:3])
    with torch.no_grad():
        zimg, ztxt = ours(pixels, ids)
        torch.testing.assert_close(zimg, ref.encode_image(pixels, normalize=True), atol=ATOL, rtol=0)
        torch.testing.assert_close(ztxt, ref.encode_text(ids, normalize=True), atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------
# big_vision


def test_big_vision_siglip2_npz(tmp_path):
    from siglip.config import ModelConfig
    from siglip.model import SigLIP
    from tests.test_convert import big_vision_arrays

    cfg = ModelConfig.from_variant("mu/4", image_size=12, text_length=L, vocab_size=330)
    torch.manual_seed(0)
    model = SigLIP(cfg).eval()
    np.savez(tmp_path / "siglip2_mu4.npz", **big_vision_arrays(model))
    (tmp_path / "gemma.model").write_bytes(gemma_proto())
    payload_model = siglip.load(tmp_path / "siglip2_mu4.npz", tokenizer=tmp_path / "gemma.model")
    assert payload_model.tokenizer.kind == "gemma" and payload_model.tokenizer(["a cat"])[0, -1] == 0
    ids = Tokenizer(gemma_proto(), L, kind="gemma")(TEXTS)
    pixels = torch.rand(2, 3, 12, 12) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(payload_model.encode_text(ids), model.encode_text(ids), atol=ATOL, rtol=0)
        torch.testing.assert_close(payload_model.encode_image(pixels), model.encode_image(pixels), atol=ATOL, rtol=0)


def test_big_vision_siglip2_naflex_npz(tmp_path):
    """A NaFlex .npz (Dense patch kernel (p*p*3, D), as big_vision's siglip2 naflex files) equals the
    model it was written from; max_num_patches defaults to the processor's 256."""
    import dataclasses

    from siglip.model import SigLIP
    from siglip.naflex import unpatchify_weight
    from tests.test_convert import big_vision_arrays, stack_blocks
    from tests.test_siglip2_naflex import ours_from

    model = ours_from(hf_siglip2())
    twin = SigLIP(dataclasses.replace(model.config, naflex=False))  # the same weights, a Conv2d patch kernel
    state = model.state_dict()
    state["image.patch_embed.weight"] = unpatchify_weight(state["image.patch_embed.weight"])
    twin.load_state_dict(state)
    arrays = {
        **big_vision_arrays(twin),
        "img/embedding/kernel": model.image.patch_embed.weight.detach().T.numpy(),
        "img/pos_embedding": model.image.pos_embed.detach().reshape(1, 5, 5, -1).numpy(),
    }
    np.savez(tmp_path / "siglip2_naflex.npz", **{f"params/{k}": v for k, v in stack_blocks(arrays).items()})
    (tmp_path / "gemma.model").write_bytes(gemma_proto())
    loaded = siglip.load(tmp_path / "siglip2_naflex.npz", tokenizer=tmp_path / "gemma.model")
    assert loaded.config.naflex and loaded.preprocess(images()[0]).patches.shape == (256, 3 * PATCH * PATCH)
    from siglip.transforms import naflex_preprocess

    batch = naflex_preprocess(images(), PATCH, MAX_PATCHES)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(batch), model.encode_image(batch), atol=ATOL, rtol=0)


def test_naflex_folder_without_processor_config_uses_processor_defaults(tmp_path):
    from siglip.interop import load_payload

    hf_siglip2().save_pretrained(tmp_path / "hf")
    write_gemma_tokenizer(tmp_path / "hf", 12)
    pre = load_payload(tmp_path / "hf")["preprocess"]
    assert pre["resample"] == "bilinear" and pre["max_num_patches"] == 256
