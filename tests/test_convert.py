"""Converted checkpoints give the peers' own outputs: Hugging Face transformers, open_clip, and a
big_vision-layout .npz, each built with random weights inside the test (no download)."""

import json
import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import siglip
from siglip.config import ModelConfig, TowerConfig
from siglip.interop import load_payload
from siglip.interop.__main__ import main as convert_main
from siglip.model import SigLIP, set_fused_qkv
from siglip.tokenizer import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)
ATOL = 1e-5

WORDS = "a photo of the cat dog bird plane car ship horse frog deer truck red blue small big one two three".split()
TEXTS = ["A photo of a Cat!", "two small, red birds.", "the   plane", "", "x" * 3 + " zebra?! " * 12]


def spm_tokenizer(length: int) -> Tokenizer:
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) for _ in range(400)]
    return Tokenizer.train(corpus, vocab_size=60, length=length)


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Peers init many tensors to 0 or 1; random values everywhere make every mapped tensor count."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def pooled(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else x.pooler_output


# --------------------------------------------------------------------------------------------------
# Hugging Face


def make_hf(tmp_path, hidden_act: str = "gelu_pytorch_tanh"):
    transformers = pytest.importorskip("transformers")
    tower = dict(
        hidden_size=72, num_hidden_layers=2, intermediate_size=100, num_attention_heads=6, hidden_act=hidden_act
    )
    config = transformers.SiglipConfig(
        text_config=dict(tower, vocab_size=64, max_position_embeddings=16),
        vision_config=dict(tower, image_size=56, patch_size=14),
    )
    torch.manual_seed(0)
    hf = transformers.SiglipModel(config).eval()
    randomize(hf)
    folder = tmp_path / "hf"
    hf.save_pretrained(folder)
    tok = spm_tokenizer(16)
    (folder / "spiece.model").write_bytes(tok.proto)
    (folder / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 56, "width": 56}, "resample": 2}))
    return hf, folder


@pytest.mark.parametrize("hidden_act", ["gelu_pytorch_tanh", "gelu"])
def test_hf_parity(tmp_path, hidden_act):
    hf, folder = make_hf(tmp_path, hidden_act)
    model = siglip.load(folder)
    assert model.config.gelu == ("tanh" if hidden_act.endswith("tanh") else "exact")
    pixels = torch.rand(3, 3, 56, 56) * 2 - 1
    ids = model.tokenizer(TEXTS[:3])
    with torch.no_grad():
        zimg, ztxt = model(pixels, ids)
        ref_img = F.normalize(pooled(hf.get_image_features(pixel_values=pixels)), dim=-1)
        ref_txt = F.normalize(pooled(hf.get_text_features(input_ids=ids)), dim=-1)
        ref_logits = hf(input_ids=ids, pixel_values=pixels).logits_per_image
    torch.testing.assert_close(zimg, ref_img, atol=ATOL, rtol=0)
    torch.testing.assert_close(ztxt, ref_txt, atol=ATOL, rtol=0)
    torch.testing.assert_close(model.logits(zimg, ztxt), ref_logits, atol=1e-4, rtol=0)
    assert model.preprocess.transforms[1].interpolation.value == "bilinear"  # from preprocessor_config.json


def test_hf_sharded_checkpoint(tmp_path):
    """A folder that transformers' save_pretrained split into shards (model.safetensors.index.json +
    model-0000i-of-0000n.safetensors) loads as the single-file one; a missing shard is named. Before:
    'folder with no checkpoint this toolkit knows'."""
    hf, folder = make_hf(tmp_path)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 2 and not (sharded / "model.safetensors").exists()
    for name in ("spiece.model", "preprocessor_config.json"):
        (sharded / name).write_bytes((folder / name).read_bytes())
    one, split = siglip.load(folder), siglip.load(sharded)
    pixels = torch.rand(2, 3, 56, 56) * 2 - 1
    torch.testing.assert_close(split.embed_images(pixels), one.embed_images(pixels), atol=0, rtol=0)
    torch.testing.assert_close(split.embed_texts(TEXTS[:2]), one.embed_texts(TEXTS[:2]), atol=0, rtol=0)
    shard = sorted(sharded.glob("model-*-of-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"shard {shard.name} is missing"):
        siglip.load(sharded)


def test_hf_tokenizer_parity(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf", reason="transformers' SiglipTokenizer needs protobuf")
    _, folder = make_hf(tmp_path)
    model = siglip.load(folder)
    hf_tok = transformers.SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=16)
    ref = hf_tok(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(model.tokenizer(TEXTS), ref)


def test_hf_roundtrip_export(tmp_path):
    """Ours -> --to hf -> transformers SiglipModel.from_pretrained: same embeddings and logits."""
    transformers = pytest.importorskip("transformers")
    cfg = ModelConfig.from_variant("mu/8", image_size=32, text_length=16, vocab_size=64)
    torch.manual_seed(1)
    model = SigLIP(cfg).eval()
    randomize(model, 1)
    src = tmp_path / "ours.pt"
    siglip.save_model(src, model, spm_tokenizer(16), resample="bilinear")
    convert_main([str(src), str(tmp_path / "export"), "--to", "hf"])
    hf = transformers.SiglipModel.from_pretrained(tmp_path / "export").eval()
    pixels, ids = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        zimg, ztxt = model(pixels, ids)
        torch.testing.assert_close(
            F.normalize(pooled(hf.get_image_features(pixel_values=pixels)), dim=-1), zimg, atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            F.normalize(pooled(hf.get_text_features(input_ids=ids)), dim=-1), ztxt, atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            hf(input_ids=ids, pixel_values=pixels).logits_per_image, model.logits(zimg, ztxt), atol=1e-4, rtol=0
        )
    # the exported folder reads back bit-identically, tokenizer and preprocessing included
    back = load_payload(tmp_path / "export")
    for k, v in model.state_dict().items():
        assert torch.equal(back["state_dict"][k], v), k
    assert back["preprocess"] == {"image_size": 32, "resample": "bilinear"}
    pytest.importorskip("google.protobuf", reason="transformers' SiglipTokenizer needs protobuf")
    hf_tok = transformers.SiglipTokenizer.from_pretrained(tmp_path / "export")
    ref = hf_tok(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(siglip.load(tmp_path / "export").tokenizer(TEXTS), ref)


def test_hf_tower_files(tmp_path):
    """Standalone tower files, with and without the vision_model./text_model. prefix."""
    from safetensors.torch import load_file, save_file

    hf, folder = make_hf(tmp_path)
    full = load_payload(folder)["state_dict"]
    state = load_file(str(folder / "model.safetensors"))
    for prefix, tower in (("vision_model.", "image"), ("text_model.", "text")):
        part = {k: v for k, v in state.items() if k.startswith(prefix)}
        for name, sd in (("prefixed", part), ("bare", {k[len(prefix) :]: v for k, v in part.items()})):
            path = tmp_path / f"{tower}_{name}" / "tower.safetensors"
            path.parent.mkdir()
            save_file(sd, str(path))
            # as SiglipVisionModel/SiglipTextModel.save_pretrained write it: the tower's own config
            sub = hf.config.vision_config if tower == "image" else hf.config.text_config
            (path.parent / "config.json").write_text(sub.to_json_string())
            if tower == "text":
                (path.parent / "spiece.model").write_bytes((folder / "spiece.model").read_bytes())
            payload = load_payload(path)
            assert payload["partial"] == tower
            assert set(payload["state_dict"]) == {k for k in full if k.startswith(tower + ".")}
            for k, v in payload["state_dict"].items():
                assert torch.equal(v, full[k]), k
            with pytest.raises(ValueError, match="only the"):
                siglip.load(path)


def test_unknown_and_leftover_keys_are_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = make_hf(tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    state["vision_model.extra_projection.weight"] = torch.zeros(2, 2)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(KeyError, match="extra_projection"):
        siglip.load(folder)
    bad = tmp_path / "bad.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        siglip.load(bad)
    with pytest.raises(ValueError, match="looked for"):
        siglip.load(tmp_path)


# --------------------------------------------------------------------------------------------------
# open_clip


def make_open_clip(tmp_path):
    """A small SigLIP built by open_clip itself: CustomTextCLIP as ViT-B-16-SigLIP configures it, with
    the timm trunk shrunk through timm's own kwargs (open_clip configs cannot resize timm models)."""
    open_clip = pytest.importorskip("open_clip")
    timm = pytest.importorskip("timm")
    text_cfg = dict(
        context_length=16, vocab_size=64, width=128, heads=2, layers=2, mlp_ratio=1.5,
        no_causal_mask=True, proj_bias=True, pool_type="last", norm_kwargs={"eps": 1e-6},
    )  # fmt: skip
    vision_cfg = dict(image_size=224, timm_model_name="vit_base_patch16_siglip_224", timm_pool="map", timm_proj="none")
    torch.manual_seed(0)
    with torch.device("meta"):  # the towers are rebuilt below; skip building a B/16 trunk
        model = open_clip.CustomTextCLIP(embed_dim=128, vision_cfg=vision_cfg, text_cfg=text_cfg, init_logit_bias=-10)
    model.text = open_clip.model._build_text_tower(128, text_cfg)
    model.logit_scale = torch.nn.Parameter(torch.tensor(2.3))
    model.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))
    model.visual.trunk = timm.create_model(
        "vit_base_patch16_siglip_224", img_size=28, patch_size=7, embed_dim=128, depth=2, num_heads=2,
        mlp_ratio=1.5, num_classes=0, global_pool="map",
    )  # fmt: skip
    model.eval()
    randomize(model)
    path = tmp_path / "open_clip" / "open_clip_pytorch_model.bin"
    path.parent.mkdir()
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    (path.parent / "spiece.model").write_bytes(spm_tokenizer(16).proto)
    return model, path


def test_open_clip_parity(tmp_path):
    ref, path = make_open_clip(tmp_path)
    model = siglip.load(path.parent)
    assert model.config.gelu == "exact" and model.config.image_size == 28
    pixels, ids = torch.rand(3, 3, 28, 28) * 2 - 1, model.tokenizer(TEXTS[:3])
    with torch.no_grad():
        zimg, ztxt = model(pixels, ids)
        torch.testing.assert_close(zimg, ref.encode_image(pixels, normalize=True), atol=ATOL, rtol=0)
        torch.testing.assert_close(ztxt, ref.encode_text(ids, normalize=True), atol=ATOL, rtol=0)
        logits = (
            ref.logit_scale.exp() * ref.encode_image(pixels, normalize=True) @ ref.encode_text(ids, normalize=True).T
        )
        torch.testing.assert_close(model.logits(zimg, ztxt), logits + ref.logit_bias, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------------
# big_vision


def big_vision_arrays(model: SigLIP) -> dict[str, np.ndarray]:
    """Our weights written out in big_vision's layout (SPEC section 3), from first principles."""
    a = lambda t: t.detach().numpy().astype(np.float32)
    out = {
        "img/embedding/kernel": a(model.image.patch_embed.weight.permute(2, 3, 1, 0)),
        "img/embedding/bias": a(model.image.patch_embed.bias),
    }
    out["img/pos_embedding"] = a(model.image.pos_embed)

    def attention(prefix, attn):
        d, heads = attn.q.weight.shape[1], attn.heads
        for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
            lin = getattr(attn, ours)
            out[f"{prefix}/{theirs}/kernel"] = a(lin.weight.T.reshape(d, heads, d // heads))
            out[f"{prefix}/{theirs}/bias"] = a(lin.bias.reshape(heads, d // heads))
        out[f"{prefix}/out/kernel"] = a(attn.out.weight.T.reshape(heads, d // heads, d))
        out[f"{prefix}/out/bias"] = a(attn.out.bias)

    def norm(prefix, ln):
        out[f"{prefix}/scale"], out[f"{prefix}/bias"] = a(ln.weight), a(ln.bias)

    def mlp(prefix, m):
        for i, lin in enumerate((m.fc1, m.fc2)):
            out[f"{prefix}/Dense_{i}/kernel"], out[f"{prefix}/Dense_{i}/bias"] = a(lin.weight.T), a(lin.bias)

    for tower, prefix in ((model.image, "img/Transformer"), (model.text, "txt/Encoder_0")):
        for i, blk in enumerate(tower.encoder.blocks):
            p = f"{prefix}/encoderblock_{i}"
            norm(f"{p}/LayerNorm_0", blk.norm1)
            attention(f"{p}/MultiHeadDotProductAttention_0", blk.attn)
            norm(f"{p}/LayerNorm_1", blk.norm2)
            mlp(f"{p}/MlpBlock_0", blk.mlp)
        norm(f"{prefix}/encoder_norm", tower.encoder.norm)
    head = model.image.head
    out["img/MAPHead_0/probe"] = a(head.probe)
    attention("img/MAPHead_0/MultiHeadDotProductAttention_0", head.attn)
    norm("img/MAPHead_0/LayerNorm_0", head.norm)
    mlp("img/MAPHead_0/MlpBlock_0", head.mlp)
    out["txt/Embed_0/embedding"] = a(model.text.token_embed.weight)
    out["txt/pos_embedding"] = a(model.text.pos_embed)
    out["txt/head/kernel"], out["txt/head/bias"] = a(model.text.head.weight.T), a(model.text.head.bias)
    out["t"], out["b"] = a(model.t_prime.reshape(1)), a(model.b.reshape(1))
    return out


def stack_blocks(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The scan layout: all encoderblock_{i}/X stacked into encoderblock/X with a leading layer axis."""
    out, stacked = {}, {}
    for k, v in arrays.items():
        head, sep, rest = k.partition("/encoderblock_")
        if not sep:
            out[k] = v
            continue
        i, _, name = rest.partition("/")
        stacked.setdefault(f"{head}/encoderblock/{name}", {})[int(i)] = v
    for k, per_layer in stacked.items():
        out[k] = np.stack([per_layer[i] for i in sorted(per_layer)])
    return out


@pytest.mark.parametrize("layout", ["params_prefix", "bare", "stacked"])
def test_big_vision_npz(tmp_path, layout):
    cfg = ModelConfig(
        variant="test",
        image=TowerConfig(72, 2, 100, 6),
        text=TowerConfig(72, 3, 100, 4),
        image_size=56,
        patch_size=14,
        text_length=16,
        vocab_size=64,
    )
    torch.manual_seed(2)
    ref = SigLIP(cfg).eval()
    randomize(ref, 2)
    arrays = big_vision_arrays(ref)
    if layout == "stacked":
        arrays = stack_blocks(arrays)
    if layout != "bare":
        arrays = {f"params/{k}": v for k, v in arrays.items()}
    path = tmp_path / "siglip.npz"
    np.savez(path, **arrays)
    tok_path = tmp_path / "tok.model"
    tok_path.write_bytes(spm_tokenizer(16).proto)
    model = siglip.load(path)
    assert model.config.image.heads == 6 and model.config.text.heads == 4 and model.config.gelu == "tanh"
    assert model.preprocess.transforms[1].interpolation.value == "bilinear"
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    pixels, ids = torch.rand(2, 3, 56, 56) * 2 - 1, model.tokenizer(TEXTS[:2])
    with torch.no_grad():
        for z, r in zip(model.model(pixels, ids), ref(pixels, ids)):  # the module: bit for bit
            torch.testing.assert_close(z, r, atol=0, rtol=0)


def test_convert_cli_to_siglip(tmp_path):
    hf, folder = make_hf(tmp_path)
    convert_main([str(folder), str(tmp_path / "m.pt"), "--to", "siglip"])
    a, b = siglip.load(folder), siglip.load(tmp_path / "m.pt")
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k
    assert torch.equal(a.tokenizer(TEXTS), b.tokenizer(TEXTS))


# --------------------------------------------------------------------------------------------------
# Fused q/k/v projections: the same parameters, so every format loads into and exports from them


def test_fused_qkv_models_load_and_export_every_format(tmp_path):
    hf, hf_folder = make_hf(tmp_path)
    oc, oc_path = make_open_clip(tmp_path)
    peers = {
        hf_folder: (
            lambda p: F.normalize(pooled(hf.get_image_features(pixel_values=p)), dim=-1),
            lambda i: F.normalize(pooled(hf.get_text_features(input_ids=i)), dim=-1),
        ),
        oc_path.parent: (lambda p: oc.encode_image(p, normalize=True), lambda i: oc.encode_text(i, normalize=True)),
    }
    for src, (image, text) in peers.items():
        model = siglip.load(src)
        set_fused_qkv(model, True)
        s = model.config.image_size
        pixels, ids = torch.rand(2, 3, s, s) * 2 - 1, model.tokenizer(TEXTS[:2])
        with torch.no_grad():
            torch.testing.assert_close(model.encode_image(pixels), image(pixels), atol=ATOL, rtol=0)
            torch.testing.assert_close(model.encode_text(ids), text(ids), atol=ATOL, rtol=0)
    # big_vision in, Hugging Face out, and back: bit-identical weights, identical fused outputs
    np.savez(tmp_path / "bv.npz", **big_vision_arrays(model))
    (tmp_path / "tok.model").write_bytes(spm_tokenizer(model.config.text_length).proto)
    from_bv = siglip.load(tmp_path / "bv.npz")
    siglip.save_model(tmp_path / "ours.pt", from_bv, from_bv.tokenizer, resample="bicubic")
    convert_main([str(tmp_path / "ours.pt"), str(tmp_path / "export"), "--to", "hf"])
    back = siglip.load(tmp_path / "export")
    for m in (from_bv, back):
        set_fused_qkv(m, True)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    with torch.no_grad():
        for z, w in zip(back(pixels, ids), from_bv(pixels, ids)):  # (big_vision means tanh GELU)
            torch.testing.assert_close(z, w, atol=0, rtol=0)
