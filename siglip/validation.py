"""Validation of a resolved `Config` as a whole, before anything runs and whatever the number of
processes: every choice field against its allowed values, ranges, and rules between fields. Each
error names the key and what is allowed."""

from __future__ import annotations

from siglip.config import Config

CHOICES: dict[str, tuple[str, ...]] = {  # config key -> allowed values
    "model.gelu": ("tanh", "exact"),
    "data.resample": ("bicubic", "bilinear", "nearest"),
    "tokenizer.model_type": ("unigram", "bpe", "char", "word"),
    "loss.name": ("sigmoid", "softmax"),
    "loss.negatives": ("all", "random", "hard", "easy"),
    "loss.distributed": ("ring", "all_gather"),
    "train.precision": ("fp32", "bf16"),
    "train.strategy": ("ddp", "fsdp"),
}
EVAL_DATASETS = {
    "zero_shot": ("imagenet", "cifar10", "cifar100", "folder", "digits", "wds", "parquet"),
    "retrieval": ("flickr30k", "coco", "manifest", "digits", "wds", "parquet"),
    "fewshot": ("imagenet", "cifar10", "cifar100", "folder", "digits", "wds", "parquet"),
}


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what is allowed."""


def _checks(cfg: Config) -> list[tuple[bool, str]]:
    """(ok, message) for each range and each rule between fields."""
    m, tr, o, lo = cfg.model, cfg.train, cfg.optim, cfg.loss
    checks = [
        (tr.batch_size > 0, f"train.batch_size={tr.batch_size}: must be > 0"),
        (
            tr.epochs > 0 or (tr.epochs == 0 and tr.steps > 0),
            f"train.epochs={tr.epochs}, train.steps={tr.steps}: one must be > 0",
        ),
        (o.lr > 0, f"optim.lr={o.lr}: must be > 0"),
        (o.warmup_steps >= 0, f"optim.warmup_steps={o.warmup_steps}: must be >= 0"),
        (
            tr.epochs > 0 or o.warmup_steps <= tr.steps,
            f"optim.warmup_steps={o.warmup_steps} is more than train.steps={tr.steps}",
        ),
        (0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio={o.min_lr_ratio}: must be in [0, 1]"),
        (o.grad_clip >= 0, f"optim.grad_clip={o.grad_clip}: must be >= 0 (0 = off)"),
        (tr.log_every > 0, f"train.log_every={tr.log_every}: must be > 0"),
        (0 <= m.dropout < 1, f"model.dropout={m.dropout}: must be in [0, 1)"),
        (
            cfg.data.max_num_patches >= 0,
            f"data.max_num_patches={cfg.data.max_num_patches}: must be >= 0 (0 = fixed size)",
        ),
        (tr.keep_checkpoints >= 0, f"train.keep_checkpoints={tr.keep_checkpoints}: must be >= 0 (0 = all)"),
        (tr.nonfinite_patience >= 1, f"train.nonfinite_patience={tr.nonfinite_patience}: must be >= 1"),
        (tr.peak_tflops >= 0, f"train.peak_tflops={tr.peak_tflops}: must be >= 0 (0 = measured)"),
        (tr.checkpoint_every >= 0, f"train.checkpoint_every={tr.checkpoint_every}: must be >= 0 (0 = at the end)"),
        (0 <= lo.negative_ratio <= 1, f"loss.negative_ratio={lo.negative_ratio}: must be in [0, 1]"),
        (lo.tile >= 0, f"loss.tile={lo.tile}: must be >= 0 (0 = chosen from the batch size)"),
        (lo.tile <= tr.batch_size, f"loss.tile={lo.tile} is larger than train.batch_size={tr.batch_size}"),
        (
            0 <= tr.micro_batch_size <= tr.batch_size,
            f"train.micro_batch_size={tr.micro_batch_size}: must be in [0, train.batch_size={tr.batch_size}]",
        ),
        (
            lo.name == "sigmoid" or lo.negatives == "all",
            f"loss.negatives={lo.negatives!r} applies to the sigmoid loss only, not loss.name={lo.name!r}",
        ),
        (
            m.patch_size > 0 and m.image_size % m.patch_size == 0,
            f"model.image_size={m.image_size} is not a multiple of model.patch_size={m.patch_size}",
        ),
        (m.text_length >= 2, f"model.text_length={m.text_length}: must be >= 2 (text tokens and EOS)"),
        (
            bool(cfg.tokenizer.path or tr.pretrained_path) or cfg.tokenizer.vocab_size <= m.vocab_size,
            f"tokenizer.vocab_size={cfg.tokenizer.vocab_size} is larger than model.vocab_size={m.vocab_size}",
        ),
        (
            tr.finetune_image_size % m.patch_size == 0,
            f"train.finetune_image_size={tr.finetune_image_size} is not a multiple of model.patch_size={m.patch_size}",
        ),
    ]
    for name in ("image", "text"):
        t = getattr(m, name)
        checks.append(
            (t.gelu in ("", "tanh", "exact"), f"model.{name}.gelu={t.gelu!r}: choose one of ['', 'tanh', 'exact']")
        )
        ok = min(t.width, t.depth, t.mlp_dim, t.heads) > 0 and t.width % t.heads == 0
        checks.append((ok, f"model.{name}: width {t.width} must split into {t.heads} heads (all sizes > 0)"))
    return checks


def validate(cfg: Config) -> Config:
    """Refuse a config that cannot work, whatever the number of processes: every choice field against
    its allowed values, ranges, and rules between fields. Raises ConfigError naming the key."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        if (value := getattr(getattr(cfg, section), name)) not in allowed:
            raise ConfigError(f"{key}={value!r}: choose one of {list(allowed)}")
    for i, ev in enumerate(cfg.evals):
        if ev.task not in EVAL_DATASETS:
            raise ConfigError(f"evals[{i}].task={ev.task!r}: choose one of {list(EVAL_DATASETS)}")
        if ev.dataset not in EVAL_DATASETS[ev.task]:
            raise ConfigError(
                f"evals[{i}].dataset={ev.dataset!r}: for {ev.task} choose one of {list(EVAL_DATASETS[ev.task])}"
            )
        if ev.every < 0 or ev.batch_size <= 0:
            raise ConfigError(f"evals[{i}]: every={ev.every} must be >= 0 and batch_size={ev.batch_size} > 0")
    for ok, message in _checks(cfg):
        if not ok:
            raise ConfigError(message)
    return cfg
