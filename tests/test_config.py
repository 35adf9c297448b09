"""Typed config files and command-line overrides."""

import re

import pytest

from siglip.config import Config, apply_overrides, load_config_file
from siglip.train.args import parse_train_args, run_name
from siglip.validation import ConfigError, validate

from .conftest import REPO


def test_config_files_load():
    base = load_config_file(REPO / "configs/base_config.py")
    assert base.model.variant == "B/16" and base.model.image_size == 224
    assert (base.train.batch_size, base.optim.lr, base.optim.warmup_steps, base.train.steps) == (
        256,
        1e-4,
        2000,
        100_000,
    )
    assert base.optim.weight_decay == 0.1
    demo = load_config_file(REPO / "configs/demo_config.py")
    assert demo.data.path == "digits" and demo.evals


def test_overrides_are_typed():
    cfg = apply_overrides(
        Config(),
        [
            "optim.lr=3e-4",
            "train.batch_size=32",
            "data.horizontal_flip=true",
            "optim.betas=0.9,0.98",
            "model.image.depth=2",
            "train.device=cpu",
        ],
    )
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.train.batch_size, int) and cfg.data.horizontal_flip is True
    assert cfg.optim.betas == (0.9, 0.98) and cfg.model.image.depth == 2


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(KeyError, match=r"unknown config key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        apply_overrides(Config(), ["optim.lrr=1"])
    with pytest.raises(KeyError, match="unknown config key 'nope.x'"):
        apply_overrides(Config(), ["nope.x=1"])


def test_wrong_type_names_the_key():
    with pytest.raises(ValueError, match="config key 'train.batch_size': cannot parse 'many' as int"):
        apply_overrides(Config(), ["train.batch_size=many"])
    with pytest.raises(ValueError, match="config key 'data.horizontal_flip'"):
        apply_overrides(Config(), ["data.horizontal_flip=maybe"])
    with pytest.raises(KeyError, match="is a section"):
        apply_overrides(Config(), ["optim=1"])


def test_seed_flags_and_config_overrides():
    run = parse_train_args(
        [
            "--config",
            str(REPO / "configs/base_config.py"),
            "--data-path",
            "x.csv",
            "--batch-size",
            "128",
            "--learning-rate",
            "5e-5",
            "--epochs",
            "10",
            "--output-dir",
            "out",
            "--config.optim.warmup_steps=7",
            "--config.train.seed",
            "3",
        ]
    )
    c = run.config
    assert (c.data.path, c.train.batch_size, c.optim.lr, c.train.epochs, c.train.output_dir) == (
        "x.csv",
        128,
        5e-5,
        10,
        "out",
    )
    assert c.optim.warmup_steps == 7 and c.train.seed == 3 and not run.resume
    assert run_name(run.config_path) == "base"
    with pytest.raises(ValueError, match="cannot parse"):
        parse_train_args(["--config", str(REPO / "configs/base_config.py"), "--batch-size", "big"])


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="config file not found: nowhere.py"):
        load_config_file("nowhere.py")


BASE = ["--config", str(REPO / "configs/demo_config.py")]


@pytest.mark.parametrize(
    "override, names",
    [
        # a misspelt choice is refused even in a 1-process run, where the field is never read
        ("--config.loss.distributed=rnig", ["loss.distributed='rnig'", "ring", "all_gather"]),
        ("--config.train.precision=fp16", ["train.precision='fp16'", "fp32", "bf16"]),
        ("--config.loss.negatives=hardest", ["loss.negatives='hardest'", "random", "easy"]),
        ("--config.data.resample=lanczos", ["data.resample='lanczos'", "bicubic"]),
        ("--config.train.strategy=zero3", ["train.strategy='zero3'", "fsdp"]),
        ("--config.model.gelu=relu", ["model.gelu='relu'", "tanh", "exact"]),
    ],
)
def test_validate_refuses_unknown_choices(override, names):
    with pytest.raises(ConfigError) as e:
        parse_train_args([*BASE, override])
    for name in names:
        assert name in str(e.value)


@pytest.mark.parametrize(
    "args, key",
    [
        (["--batch-size", "0"], "train.batch_size=0"),
        (["--learning-rate", "0"], "optim.lr=0.0"),
        (["--steps", "10", "--config.optim.warmup_steps=11"], "optim.warmup_steps=11 is more than train.steps=10"),
        (["--batch-size", "16", "--config.loss.tile=32"], "loss.tile=32 is larger than train.batch_size=16"),
        (["--batch-size", "16", "--config.train.micro_batch_size=32"], "train.micro_batch_size=32"),
        (["--config.loss.name=softmax", "--config.loss.negatives=hard"], "applies to the sigmoid loss only"),
        (["--config.tokenizer.vocab_size=5000"], "tokenizer.vocab_size=5000 is larger than model.vocab_size"),
        (["--config.model.image_size=30"], "model.image_size=30 is not a multiple of model.patch_size"),
        (["--config.model.image.heads=3"], "model.image: width 128 must split into 3 heads"),
        (["--config.model.dropout=1.5"], "model.dropout=1.5: must be in [0, 1)"),
        (["--config.train.nonfinite_patience=0"], "train.nonfinite_patience=0: must be >= 1"),
    ],
)
def test_validate_refuses_ranges_and_dependent_fields(args, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        parse_train_args([*BASE, *args])


def test_validate_checks_evaluators():
    cfg = load_config_file(REPO / "configs/demo_config.py")
    cfg.evals[0].dataset = "imagenet21k"
    with pytest.raises(ConfigError, match=r"evals\[0\].dataset='imagenet21k'.*cifar10"):
        validate(cfg)


def test_shipped_configs_validate():
    for path in sorted((REPO / "configs").glob("*_config.py")):
        validate(load_config_file(path))
