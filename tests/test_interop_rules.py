"""Export is the inverse of import through the same key rules, for every format: our state dict ->
the format's names -> back gives the same tensors exactly; and a rule left unused is an error."""

import pytest
import torch

from siglip.config import ModelConfig
from siglip.interop.big_vision import big_vision_rules
from siglip.interop.hf import hf_rules
from siglip.interop.open_clip import open_clip_rules
from siglip.interop.rules import apply_rules, unapply_rules
from siglip.interop.tensors import model_shapes
from siglip.model import SigLIP


def random_state(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: torch.randn(v.shape) for k, v in SigLIP(cfg).state_dict().items()}


@pytest.mark.parametrize("rules", [hf_rules, open_clip_rules, big_vision_rules])
def test_export_is_the_inverse_of_import(rules):
    # odd sizes, a text head of another width, heads that are not the default head_dim
    cfg = ModelConfig.from_variant("mu/8", image_size=24, text_length=7, vocab_size=33, embed_dim=48)
    cfg.image.heads = cfg.text.heads = 4
    ours = random_state(cfg)
    theirs = unapply_rules(rules(cfg), ours)
    assert len(theirs) <= len(ours)  # open_clip fuses q, k, v; every one of our tensors has a place
    back = apply_rules(rules(cfg), theirs, model_shapes(cfg), "round trip")
    assert back.keys() == ours.keys()
    for k in ours:
        assert torch.equal(back[k], ours[k]), k


def test_unapply_names_what_is_missing_or_left_over():
    cfg = ModelConfig.from_variant("mu/8", image_size=16, text_length=8, vocab_size=32)
    ours = random_state(cfg)
    with pytest.raises(KeyError, match="image.patch_embed.weight"):
        unapply_rules(hf_rules(cfg), {k: v for k, v in ours.items() if k != "image.patch_embed.weight"})
    with pytest.raises(KeyError, match="extra.weight"):
        unapply_rules(hf_rules(cfg), {**ours, "extra.weight": torch.zeros(1)})
