"""Model shapes, normalisation, initial t and b, and equivalences with naive references."""

import math

import pytest
import torch
import torch.nn.functional as F

from siglip.config import SIZES, ModelConfig
from siglip.model import Attention, SigLIP, set_fused_qkv


def test_shapes_normalisation_and_init(tiny_config):
    model = SigLIP(tiny_config).eval()
    pixels = torch.randn(3, 3, 16, 16)
    ids = torch.randint(0, 64, (3, 8))
    zimg, ztxt = model(pixels, ids)
    assert zimg.shape == ztxt.shape == (3, tiny_config.out_dim)
    torch.testing.assert_close(zimg.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(ztxt.norm(dim=-1), torch.ones(3))
    assert model.t.item() == pytest.approx(10.0)  # t' = log 10
    assert model.b.item() == -10.0
    assert model.logits(zimg, ztxt).shape == (3, 3)


def test_border_pixels_that_do_not_fill_a_patch_are_dropped():
    cfg = ModelConfig.from_variant("mu/4", image_size=18, text_length=8, vocab_size=64)
    model = SigLIP(cfg).eval()
    assert model.image.pos_embed.shape[1] == 16  # 4 x 4 patches of 4 px; 2 border pixels dropped
    x = torch.randn(1, 3, 18, 18)
    y = x.clone()
    y[..., 16:, :] = 5.0  # change only the dropped border
    y[..., :, 16:] = 5.0
    torch.testing.assert_close(model.encode_image(x), model.encode_image(y))


def test_text_tower_pools_the_last_token_without_masks(tiny_config):
    model = SigLIP(tiny_config).eval()
    ids = torch.randint(3, 64, (1, 8))
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 64
    # no causal mask: the first token changes the last position's output
    assert not torch.allclose(model.encode_text(ids), model.encode_text(changed))
    feats = model.text.forward_features(ids)
    torch.testing.assert_close(model.text(ids), model.text.head(feats[:, -1]))


def test_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    width, heads = 24, 3
    ours = Attention(width, heads)
    ref = torch.nn.MultiheadAttention(width, heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.k.weight, ours.v.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.k.bias, ours.v.bias]))
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    q, kv = torch.randn(2, 1, width), torch.randn(2, 5, width)
    torch.testing.assert_close(ours(q, kv), ref(q, kv, kv, need_weights=False)[0], atol=1e-6, rtol=1e-5)


def test_block_is_pre_layernorm_with_tanh_gelu(tiny_config):
    model = SigLIP(tiny_config).eval()
    block = model.image.encoder.blocks[0]
    x = torch.randn(2, 5, tiny_config.image.width)
    h = x + block.attn(F.layer_norm(x, (x.shape[-1],), block.norm1.weight, block.norm1.bias, 1e-6))
    m = F.layer_norm(h, (x.shape[-1],), block.norm2.weight, block.norm2.bias, 1e-6)
    mlp = block.mlp
    want = h + mlp.fc2(
        0.5 * mlp.fc1(m) * (1 + torch.tanh(math.sqrt(2 / math.pi) * (mlp.fc1(m) + 0.044715 * mlp.fc1(m) ** 3)))
    )
    torch.testing.assert_close(block(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "variant,width,depth,mlp,heads",
    [("B/16", 768, 12, 3072, 12), ("L/16", 1024, 24, 4096, 16), ("So400m/14", 1152, 27, 4304, 16)],
)
def test_size_table_matches_the_released_models(variant, width, depth, mlp, heads):
    cfg = ModelConfig.from_variant(variant)
    assert (cfg.image.width, cfg.image.depth, cfg.image.mlp_dim, cfg.image.heads) == (width, depth, mlp, heads)
    assert cfg.text == cfg.image and cfg.out_dim == width
    assert cfg.patch_size == int(variant.split("/")[1])
    assert set(SIZES) >= {"tiny", "B", "L", "So400m"}


def test_b16_parameter_count():
    # SigLIP B/16-224 (English vocabulary): ~203M parameters, as the released checkpoint.
    with torch.device("meta"):
        model = SigLIP(ModelConfig.from_variant("B/16"))
    n = sum(p.numel() for p in model.parameters())
    assert 202e6 < n < 204e6, n


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model variant 'X/16'"):
        ModelConfig.from_variant("X/16")


def test_fused_qkv_equals_separate_projections(tiny_config):
    """One product over the concatenated q/k/v (k/v in the MAP head) == three products, forward and
    gradients, with the same parameters (the state dict does not change)."""
    torch.manual_seed(0)
    separate = SigLIP(tiny_config)
    fused = SigLIP(tiny_config)
    fused.load_state_dict(separate.state_dict())
    set_fused_qkv(fused, True)
    assert list(fused.state_dict()) == list(separate.state_dict())
    pixels, ids = torch.randn(3, 3, 16, 16), torch.randint(0, 64, (3, 8))
    for model in (separate, fused):
        zimg, ztxt = model(pixels, ids)
        (zimg @ ztxt.T).pow(2).sum().backward()
    for z, w in zip(fused(pixels, ids), separate(pixels, ids)):
        torch.testing.assert_close(z, w, atol=1e-6, rtol=0)
    for (name, p), q in zip(fused.named_parameters(), separate.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=0, msg=name)
