"""The build functions training/train.py is made of, called directly."""

import json
from pathlib import Path

import torch

from siglip.checkpoint import save_model
from siglip.config import ModelConfig, load_config_file
from siglip.distributed import Runtime
from siglip.model import SigLIP
from siglip.tokenizer import Tokenizer
from siglip.train.build import (
    adopt_checkpoint_config,
    build_data,
    build_model,
    build_tokenizer,
    find_source,
    starting_payload,
    write_config,
)

from .conftest import REPO


def test_config_json_is_the_config_actually_trained(tmp_path):
    """A fine-tune's config.json holds the checkpoint's architecture, not the config file's."""
    ckpt_cfg = ModelConfig.from_variant("mu/8", image_size=24, text_length=8, vocab_size=40)
    tok = Tokenizer.train([f"a photo of {w}" for w in "cat dog bird ship car".split()] * 20, 40, 8)
    save_model(tmp_path / "start.pt", SigLIP(ckpt_cfg), tok, resample="bilinear")
    cfg = load_config_file(REPO / "configs/demo_config.py")
    cfg.train.pretrained_path = str(tmp_path / "start.pt")
    payload = starting_payload(cfg.train, False, tmp_path / "checkpoint.pt")
    adopt_checkpoint_config(cfg, payload)
    write_config(cfg, tmp_path / "out", Runtime())
    written = json.loads((tmp_path / "out/config.json").read_text())
    assert written["model"]["image_size"] == 24 and written["model"]["image"]["width"] == 64
    assert written["data"]["resample"] == "bilinear"
    model, forward = build_model(cfg, payload, cfg.train.pretrained_path, Runtime())
    assert forward is model and torch.equal(model.image.pos_embed, payload["state_dict"]["image.pos_embed"])


def test_data_and_tokenizer_from_a_manifest(tmp_path):
    from .conftest import write_image

    rows = ["image,caption"]
    for i in range(10):
        write_image(tmp_path / f"{i}.png", color=(20 * i, 100, 30))
        rows.append(f"{i}.png,a picture number {i}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config_file(REPO / "configs/demo_config.py")
    cfg.data.path, cfg.data.num_workers, cfg.train.batch_size = str(tmp_path / "pairs.csv"), 0, 4
    cfg.tokenizer.vocab_size = 40
    source = find_source(cfg)
    tokenizer = build_tokenizer(cfg, None, source, Runtime())
    data = build_data(cfg, source, tokenizer, Runtime())
    assert (data.n_samples, data.steps_per_epoch) == (10, 2)
    batches = list(data.batches(0, 1))  # from batch 1 of epoch 0: the last one
    assert len(batches) == 1 and batches[0]["pixels"].shape == (4, 3, 16, 16)
    assert batches[0]["ids"].shape == (4, cfg.model.text_length) and Path(source.pairs[0][0]).is_file()
