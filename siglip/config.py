"""Typed configuration: dataclasses, config files with `get_config()`, overrides.

A config file is plain Python that defines `get_config() -> Config`. Any field can be overridden as
`--config.a.b=value` (parsed by the field's declared type); an unknown key, an unparsable value or a
value outside what `siglip.validation.validate` allows is an error that names the key."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------------
# Model sizes: one table (width, depth, mlp_dim, heads), both towers alike; the variant name's `patch` is the patch size
SIZES: dict[str, tuple[int, int, int, int]] = {
    "mu": (64, 2, 256, 2),  # CPU tests
    "tiny": (128, 4, 512, 4),  # CPU demo
    "S": (384, 12, 1536, 6),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
}


@dataclass
class TowerConfig:
    """One transformer encoder: width (d_model), depth (blocks), MLP hidden size, attention heads."""

    width: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    heads: int = 12
    gelu: str = ""  # this tower's GELU, "tanh" or "exact"; "" = ModelConfig.gelu (open_clip SigLIP 2 mixes them)


@dataclass
class ModelConfig:
    """The architecture. Build it from the size table with `ModelConfig.from_variant("B/16")`."""

    variant: str = "B/16"  # informational once resolved: the towers below are what is built
    image: TowerConfig = field(default_factory=TowerConfig)
    text: TowerConfig = field(default_factory=TowerConfig)
    image_size: int = 224  # pixels, square
    patch_size: int = 16
    text_length: int = 64  # tokens, fixed: texts are EOS-padded to exactly this length
    vocab_size: int = 32000
    embed_dim: int = 0  # output of the text head; 0 = image width (the released models)
    text_head: bool = True  # Linear(text width -> embed_dim) on the last token
    gelu: str = "tanh"  # "tanh" (big_vision, Hugging Face) or "exact" (erf; open_clip's timm towers)
    naflex: bool = False  # SigLIP 2 NaFlex: images at their own aspect ratio as masked patch sequences (siglip.naflex)
    init_t_prime: float = 2.302585092994046  # log(10); paper Table 4
    init_b: float = -10.0
    dropout: float = 0.0  # training only: on each block's attention and MLP outputs (and the MLP hidden)

    @classmethod
    def from_variant(cls, variant: str, **overrides: Any) -> ModelConfig:
        """`"B/16"` -> B-sized towers with 16 px patches. Keyword args override any other field."""
        name, _, patch = variant.partition("/")
        if name not in SIZES or not patch.isdigit():
            raise ValueError(f"unknown model variant {variant!r}: expected NAME/PATCH with NAME in {list(SIZES)}")
        width, depth, mlp, heads = SIZES[name]
        cfg = cls(
            variant=variant,
            image=TowerConfig(width, depth, mlp, heads),
            text=TowerConfig(width, depth, mlp, heads),
            patch_size=int(patch),
        )
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise KeyError(f"unknown ModelConfig field {k!r}")
            setattr(cfg, k, v)
        return cfg

    @property
    def out_dim(self) -> int:
        """Size of the joint embedding space."""
        return self.embed_dim or self.image.width


@dataclass
class DataConfig:
    """Training pairs. `path`: a CSV/TSV/JSONL manifest, a folder of images with same-named .txt
    captions, webdataset shards, parquet files (a file, folder or glob) or a datasets.save_to_disk
    folder, or `digits` (the bundled demo data, written under `digits_root` on first use)."""

    path: str = ""
    image_column: str = ""  # "" = detect among image/filepath/file_name/...
    caption_column: str = ""  # "" = detect among caption/text/title/...
    num_workers: int = 2
    resample: str = "bicubic"  # resize filter: bicubic (Hugging Face) or bilinear (big_vision)
    max_num_patches: int = 0  # NaFlex: at most this many patches per image; 0 = the checkpoint's (or 256)
    random_resized_crop: bool = False  # seed's augmentations; the paper trains without them
    crop_scale_min: float = 0.5
    horizontal_flip: bool = False
    color_jitter: float = 0.0  # strength for brightness/contrast/saturation; 0 = off
    jpeg_draft: bool = True  # decode training JPEGs at 1/2-1/8 scale when that still covers the crop; evals: in full
    digits_root: str = "data/digits"
    # webdataset shards (`--data-path '/data/{00000..00099}.tar'`): caption in KEY.txt or KEY.json's caption_column
    shuffle_buffer: int = 1000  # samples held for shuffling, per worker; 0 = stream order
    resampled: bool = False  # draw shards with replacement forever (no epoch end); needs epoch_samples
    epoch_samples: int = 0  # samples per epoch of a stream; 0 = count them (non-resampled only)


@dataclass
class TokenizerConfig:
    """SentencePiece. `path` = the tokenizer to use (a .model or tokenizer.json, a folder holding one,
    or a Hub id such as google/siglip-base-patch16-224); empty = train one on the training captions."""

    path: str = ""
    vocab_size: int = 32000  # for training a new one; capped by what the captions support
    model_type: str = "unigram"


@dataclass
class LossConfig:
    name: str = "sigmoid"  # "sigmoid" (SigLIP) or "softmax" (CLIP's InfoNCE, the paper's baseline)
    # negative sampling (paper Fig. 6): all/random/hard/easy keeping this fraction; random draws from negative_seed
    negatives: str = "all"
    negative_ratio: float = 1.0
    negative_seed: int = 0
    tile: int = 0  # side of the sigmoid loss's tiles; 0 = chosen from the batch size
    distributed: str = "ring"  # with several processes: "ring" (the paper's) or "all_gather"


@dataclass
class OptimConfig:
    """AdamW. `weight_decay` follows PyTorch's convention (multiplied by the lr at each step).
    No decay on biases, norms, embeddings, the MAP probe, t' and b."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 2000
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    # Fine-tuning: lr multiplier per tower; 0 freezes it (image 0 = the paper's SigLiT); t', b: base lr
    image_lr_mult: float = 1.0
    text_lr_mult: float = 1.0


@dataclass
class EvalConfig:
    """One evaluator run during and after training (siglip.eval.evaluators), the same code as
    evaluation/zero_shot.py and evaluation/retrieval.py.

    task `zero_shot`: dataset imagenet, cifar10, cifar100, folder, digits (the demo's held-out
    split) or wds (a CLIP_benchmark webdataset folder); task `retrieval`: dataset flickr30k, coco,
    manifest, digits (the held-out pairs) or wds; task `fewshot`: a zero_shot dataset, linear
    probes on `train_split` scored on `split`, `shots` per class, `seeds`, `l2_reg`.
    `path`: the data folder or file ("" for digits = data.digits_root). `split`: "" = the dataset's
    evaluation split. `templates` / `classnames`: files, one entry per line ("" = the standard lists)."""

    dataset: str = "digits"
    task: str = "zero_shot"  # zero_shot, retrieval or fewshot
    path: str = ""
    split: str = ""
    templates: str = ""
    classnames: str = ""
    every: int = 0  # steps between runs; 0 = only at the end
    batch_size: int = 256
    # task `fewshot` (big_vision's linear probes, siglip.eval.fewshot): `split` is the test split
    train_split: str = ""  # "" = train
    shots: list[int] = field(default_factory=lambda: [1, 5, 10, 25])
    seeds: int = 3
    l2_reg: float = 1024.0


@dataclass
class TrainConfig:
    batch_size: int = 256
    epochs: int = 0  # if > 0, the run length in epochs (overrides steps)
    steps: int = 100_000
    seed: int = 0
    device: str = "auto"  # auto = cuda if available, else cpu
    precision: str = "fp32"  # fp32 or bf16 (autocast; the loss stays fp32)
    log_every: int = 10
    checkpoint_every: int = 1000  # steps between resumable checkpoints; 0 = only at the end
    stop_at_step: int = 0  # end this run early at this step (time-sliced jobs; tests); 0 = never
    keep_checkpoints: int = 2  # newest checkpoint-<step>.pt kept (--resume falls back past a broken one); 0 = all
    nonfinite_patience: int = 10  # NaN/inf loss or gradient: the step is skipped; this many in a row stop the run
    output_dir: str = "./checkpoints"
    pretrained_path: str = ""  # any format siglip.load reads (ours, Hugging Face, open_clip, big_vision), or a Hub id
    pretrained_tokenizer: str = ""  # SentencePiece model, for checkpoints without one beside them
    finetune_image_size: int = 0  # fine-tune at this resolution (position embeddings resized); 0 = the checkpoint's
    # many processes (torchrun/SLURM) and small memory; batch_size is the global batch
    strategy: str = "ddp"  # "ddp" (replicate) or "fsdp" (FSDP2: shard each transformer block)
    micro_batch_size: int = 0  # per-rank micro-batch for exact accumulation (GradCache); 0 = off
    activation_checkpointing: bool = False  # recompute each transformer block in the backward
    compile: bool = False  # torch.compile the model (siglip.compile; eager when it cannot work)
    peak_tflops: float = 0.0  # the matmul peak for MFU in the log; 0 = measured once and cached (siglip.flops)


@dataclass
class LogConfig:
    """Where else the metrics.jsonl scalars go (`siglip.train.loggers`); each needs its extra installed."""

    tensorboard: bool = False  # events under OUTPUT_DIR/tensorboard
    wandb: str = ""  # a W&B project; offline unless WANDB_MODE is set or an API key is configured


@dataclass
class Config:
    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_variant("B/16"))
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evals: list[EvalConfig] = field(default_factory=list)
    log: LogConfig = field(default_factory=LogConfig)


# --------------------------------------------------------------------------------------------------
# Loading and overriding


def load_config_file(path: str | Path) -> Config:
    """Execute a config file and return its `get_config()`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_siglip_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"{path} defines no get_config()")
    cfg = module.get_config()
    if not isinstance(cfg, Config):
        raise TypeError(f"{path}: get_config() returned {type(cfg).__name__}, expected siglip.config.Config")
    return cfg


def _parse_value(key: str, text: str, tp: Any) -> Any:
    """Parse `text` as type `tp` (int, float, bool, str, tuples, lists, Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        return _parse_value(key, text, args[0])
    try:
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
        if origin in (tuple, list):
            items = json.loads(text) if text.strip().startswith("[") else text.split(",")
            elem = typing.get_args(tp)
            if origin is tuple:
                if len(elem) != len(items):
                    raise ValueError
                return tuple(_parse_value(key, str(x), t) for x, t in zip(items, elem))
            return [_parse_value(key, str(x), elem[0]) for x in items]
    except (ValueError, json.JSONDecodeError):
        pass
    else:
        raise TypeError(f"config key {key!r}: unsupported field type {tp}")
    raise ValueError(f"config key {key!r}: cannot parse {text!r} as {getattr(tp, '__name__', tp)}")


def set_override(cfg: Config, key: str, text: str) -> None:
    """Set dotted `key` (e.g. `optim.lr`) from its command-line string form."""
    obj: Any = cfg
    parts = key.split(".")
    for depth, name in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
        if name not in fields:
            prefix = ".".join(parts[:depth])
            known = [f"{prefix}.{k}" if prefix else k for k in fields]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KeyError(f"unknown config key {key!r}{hint}")
        if depth == len(parts) - 1:
            hints = typing.get_type_hints(type(obj))
            tp = hints[name]
            if dataclasses.is_dataclass(getattr(obj, name)):
                raise KeyError(f"config key {key!r} is a section: set one of its fields")
            if any(dataclasses.is_dataclass(a) for a in typing.get_args(tp)):
                raise KeyError(f"config key {key!r} is a list of sections: edit it in the config file")
            setattr(obj, name, _parse_value(key, text, tp))
        else:
            obj = getattr(obj, name)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `["a.b=value", ...]` in order."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"config override {item!r} must look like --config.KEY=VALUE")
        set_override(cfg, key.strip(), value)
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def model_config_from_dict(d: dict) -> ModelConfig:
    """Inverse of `dataclasses.asdict` for the ModelConfig saved in a model file."""
    d = dict(d)
    d["image"] = TowerConfig(**d["image"])
    d["text"] = TowerConfig(**d["text"])
    unknown = set(d) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise KeyError(f"model config has unknown keys {sorted(unknown)}")
    return ModelConfig(**d)
