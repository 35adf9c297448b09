"""The training command line: `--config FILE`, the seed's flags, `--resume`, and any number of
`--config.KEY=VALUE` overrides, resolved into a validated `Config`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from siglip.config import Config, apply_overrides, load_config_file, set_override
from siglip.validation import validate

EXAMPLES = """examples:
  python training/train.py --config configs/demo_config.py
  python training/train.py --config configs/base_config.py --data-path pairs.csv --batch-size 256 \\
      --learning-rate 1e-4 --epochs 50 --output-dir ./checkpoints --config.train.precision=bf16
  torchrun --standalone --nproc_per_node 2 training/train.py --config configs/demo_config.py
"""

SEED_FLAGS = {  # flag -> config key
    "--data-path": "data.path",
    "--batch-size": "train.batch_size",
    "--learning-rate": "optim.lr",
    "--epochs": "train.epochs",
    "--steps": "train.steps",
    "--output-dir": "train.output_dir",
    "--pretrained-path": "train.pretrained_path",
    "--max-num-patches": "data.max_num_patches",
}


@dataclass
class RunArgs:
    config: Config
    config_path: Path
    resume: bool


def parse_train_args(argv: list[str]) -> RunArgs:
    """`--config FILE`, the seed's flags, `--resume`, and any number of `--config.KEY=VALUE`."""
    parser = argparse.ArgumentParser(
        prog="training/train.py",
        description="Train SigLIP. Any config field can be set with --config.KEY=VALUE, e.g. --config.optim.warmup_steps=500",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="Python config file with get_config()")
    for flag, key in SEED_FLAGS.items():
        parser.add_argument(flag, default=None, help=f"sets {key}")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    i = 0
    while i < len(rest):
        item = rest[i]
        if not item.startswith("--config."):
            parser.error(f"unrecognized argument {item!r} (config fields are set as --config.KEY=VALUE)")
        item = item[len("--config.") :]
        if "=" not in item:  # --config.a.b VALUE
            if i + 1 >= len(rest):
                parser.error(f"--config.{item} needs a value")
            item, i = f"{item}={rest[i + 1]}", i + 1
        overrides.append(item)
        i += 1
    cfg = load_config_file(args.config)
    for flag, key in SEED_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            set_override(cfg, key, value)
    if args.steps is not None and args.epochs is None:
        cfg.train.epochs = 0  # an explicit --steps sets the run length
    apply_overrides(cfg, overrides)
    if any(o.partition("=")[0].strip() == "model.image_size" for o in overrides):
        resolution_from_command_line(cfg)
    return RunArgs(validate(cfg), Path(args.config), args.resume)


def resolution_from_command_line(cfg: Config) -> None:
    """`--config.model.image_size=S` with a pretrained model: fine-tune at S px (the checkpoint's
    architecture replaces the config's model, so the size goes where it survives that:
    train.finetune_image_size, whose position embeddings are resized as big_vision does)."""
    tc, size = cfg.train, cfg.model.image_size
    if not tc.pretrained_path:
        return
    if tc.finetune_image_size and tc.finetune_image_size != size:
        raise ValueError(
            f"--config.model.image_size={size} and train.finetune_image_size={tc.finetune_image_size} disagree"
        )
    tc.finetune_image_size = size


def run_name(config_path: str | Path) -> str:
    """`configs/base_config.py` -> `base`: the final model is saved as `siglip_<run_name>.pt`."""
    stem = Path(config_path).stem
    return stem[: -len("_config")] if stem.endswith("_config") else stem
