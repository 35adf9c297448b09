"""Builders for a training run, in the order `training/train.py` calls them: the weights to start from
(a resume or a pretrained checkpoint of any format), the data source, the tokenizer, the batches,
and the model. Each is a plain function of the config that tests call directly."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from siglip.checkpoint import Payload, read_resumable, tokenizer_from_payload
from siglip.compile import compile_or_eager
from siglip.config import Config, TrainConfig, model_config_from_dict, to_dict
from siglip.data import Pair, PairDataset, epoch_loader, find_pairs, steps_per_epoch
from siglip.data.table_stream import TableStream, table_loader
from siglip.data.tables import Tables, find_tables, table_captions
from siglip.data.webdataset import TarStream, count_samples, is_shard_pattern, read_captions, shard_list, stream_loader
from siglip.distributed import Runtime, broadcast_object, wrap_model
from siglip.interop import load_into, load_pretrained, load_tokenizer
from siglip.model import SigLIP
from siglip.optim import freeze_towers
from siglip.tokenizer import Tokenizer
from siglip.transforms import draft_size, model_transform

log = logging.getLogger("train")


def starting_payload(tc: TrainConfig, resume: bool, checkpoint_path: Path) -> Payload | None:
    """The checkpoint this run starts from: on --resume the newest good one in OUTPUT_DIR
    (`siglip.checkpoint.read_resumable`: checkpoint.pt, else an older checkpoint-<step>.pt), else the
    pretrained model of any format (ours, Hugging Face, open_clip, big_vision), else None (from scratch)."""
    if resume:
        return read_resumable(checkpoint_path.parent)[0]
    if not tc.pretrained_path:
        return None
    payload = load_pretrained(tc.pretrained_path, tc.pretrained_tokenizer or None, tc.finetune_image_size)
    if payload.get("partial") == "text":
        raise ValueError(f"{tc.pretrained_path}: a text tower alone; fine-tuning needs a full model or an image tower")
    return payload


def adopt_checkpoint_config(cfg: Config, payload: Payload | None) -> None:
    """The weights decide the architecture and the preprocessing: a full checkpoint's model config
    and resize filter replace the config file's (a standalone image tower keeps the config's). A
    NaFlex checkpoint also gives its max_num_patches unless data.max_num_patches is set; a
    data.max_num_patches with no checkpoint makes the new model NaFlex."""
    full = payload is not None and not payload.get("partial")
    if full:
        cfg.model = model_config_from_dict(payload["model_config"])
        cfg.data.resample = payload["preprocess"]["resample"]
        cfg.data.max_num_patches = cfg.data.max_num_patches or payload["preprocess"].get("max_num_patches", 0)
    if cfg.data.max_num_patches and not cfg.model.naflex:
        if full:
            raise ValueError(
                f"data.max_num_patches={cfg.data.max_num_patches}: the checkpoint is a fixed-resolution model"
            )
        cfg.model.naflex = True


def write_config(cfg: Config, out_dir: Path, rt: Runtime) -> None:
    """OUTPUT_DIR/config.json: the resolved config this run trains with (rank 0 writes)."""
    if rt.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))


@dataclass
class Source:
    """Where the training pairs are: webdataset shards (streamed), parquet/Arrow tables (streamed by
    row group), or a listed set of pairs."""

    shards: list[str] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    tables: Tables | None = None

    @property
    def streaming(self) -> bool:
        return bool(self.shards)


def find_source(cfg: Config) -> Source:
    d = cfg.data
    if is_shard_pattern(d.path):
        return Source(shards=shard_list(d.path))
    if (tables := find_tables(d.path, d.image_column, d.caption_column)) is not None:
        return Source(tables=tables)
    return Source(pairs=find_pairs(d.path, d.image_column, d.caption_column, d.digits_root))


def build_tokenizer(cfg: Config, payload: Payload | None, source: Source, rt: Runtime) -> Tokenizer:
    """The checkpoint's own tokenizer when there is one (a fine-tune or a resume reuses it), else
    `tokenizer.path`, else a SentencePiece model trained on rank 0 on the training captions (the
    first 100k of a stream) and sent to the other ranks."""
    if payload is not None and not payload.get("partial"):
        tokenizer = tokenizer_from_payload(payload)
    elif cfg.tokenizer.path:
        tokenizer = load_tokenizer(cfg.tokenizer.path, cfg.model.text_length)
    else:
        proto = None
        if rt.is_main:
            if source.streaming:
                captions = read_captions(source.shards, 100_000, cfg.data.caption_column)
            elif source.tables is not None:
                captions = table_captions(source.tables, 100_000)
            else:
                captions = [c for _, c in source.pairs]
            tc = cfg.tokenizer
            proto = Tokenizer.train(captions, tc.vocab_size, cfg.model.text_length, tc.model_type).proto
        tokenizer = Tokenizer(broadcast_object(proto, rt), cfg.model.text_length)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} pieces, model.vocab_size is {cfg.model.vocab_size}")
    return tokenizer


@dataclass
class TrainData:
    """This rank's batches: `batches(epoch, start)` yields {"pixels", "ids", "skipped"} dicts."""

    batches: Callable[[int, int], Iterator[dict]]
    n_samples: int
    steps_per_epoch: int


def build_data(cfg: Config, source: Source, tokenizer: Tokenizer, rt: Runtime) -> TrainData:
    """Dataset and loader for `source`: decoding and augmentation in `data.num_workers` processes;
    each rank takes its 1/world_size of every global batch."""
    d, tc = cfg.data, cfg.train
    if tc.batch_size % rt.world_size:
        raise ValueError(f"--batch-size {tc.batch_size} does not split over {rt.world_size} processes")
    transform = model_transform(  # (3, S, S) pixels, or NaFlex patches for a NaFlex model
        cfg.model,
        {"image_size": cfg.model.image_size, "resample": d.resample, "max_num_patches": d.max_num_patches},
        random_resized_crop=d.random_resized_crop,
        crop_scale_min=d.crop_scale_min,
        horizontal_flip=d.horizontal_flip,
        color_jitter=d.color_jitter,
    )
    draft = 0  # NaFlex sizes depend on each image's aspect: decoded in full
    if d.jpeg_draft and not cfg.model.naflex:
        draft = draft_size(cfg.model.image_size, d.random_resized_crop, d.crop_scale_min)
    if source.tables is not None:
        stream = TableStream(
            source.tables, transform, tokenizer, tc.batch_size, rank=rt.rank, world_size=rt.world_size,
            seed=tc.seed, shuffle_buffer=d.shuffle_buffer, draft=draft,
        )  # fmt: skip
        n = source.tables.n_rows
        return TrainData(lambda e, s: table_loader(stream, e, s, d.num_workers), n, steps_per_epoch(n, tc.batch_size))
    if not source.streaming:
        dataset = PairDataset(source.pairs, transform, seed=tc.seed, draft=draft)
        spe = steps_per_epoch(len(dataset), tc.batch_size)
        batches = lambda epoch, start: epoch_loader(
            dataset, tokenizer, tc.batch_size, epoch, start, d.num_workers, rt.rank, rt.world_size
        )
        return TrainData(batches, len(dataset), spe)
    if d.resampled and not d.epoch_samples:
        raise ValueError("data.resampled streams have no end: set data.epoch_samples (samples per epoch)")
    n_samples = d.epoch_samples or count_samples(source.shards)
    stream = TarStream(
        source.shards,
        transform,
        tokenizer,
        tc.batch_size // rt.world_size,
        rank=rt.rank,
        world_size=rt.world_size,
        seed=tc.seed,
        shuffle_buffer=d.shuffle_buffer,
        resampled=d.resampled,
        repeat=True,
        caption_key=d.caption_column,
        draft=draft,
    )
    spe = steps_per_epoch(n_samples, tc.batch_size)
    return TrainData(lambda epoch, start: stream_loader(stream, epoch, start, spe, d.num_workers), n_samples, spe)


def build_model(cfg: Config, payload: Payload | None, where: str | Path, rt: Runtime) -> tuple[SigLIP, Callable]:
    """The model (with the payload's weights), moved to the device, towers frozen as the optimizer
    config says, then wrapped for the process group: returns (model, forward), where `forward` is
    the DDP wrapper or the model itself (sharded in place under FSDP2), compiled with train.compile."""
    model = SigLIP(cfg.model)
    if payload is not None:
        load_into(model, payload, where)
    model.to(rt.device)
    model.image.encoder.checkpoint_blocks = model.text.encoder.checkpoint_blocks = cfg.train.activation_checkpointing
    if cfg.loss.name == "softmax":
        model.b.requires_grad_(False)  # a softmax ignores b: DDP must not wait for its gradient
    freeze_towers(model, cfg.optim)  # SigLiT (lr multiplier 0) before wrapping: DDP must know what trains
    return model, compile_or_eager(wrap_model(model, rt, cfg.train.strategy), cfg.train.compile, rt.device)


def log_run(cfg: Config, data: TrainData, total_steps: int, tokenizer: Tokenizer, model: SigLIP, rt: Runtime) -> None:
    tc = cfg.train
    if tc.batch_size > data.n_samples:
        log.warning("batch size %d > %d pairs: each step uses all of them", tc.batch_size, data.n_samples)
    log.info(
        "%d pairs, %d steps per epoch, %d steps, tokenizer with %d pieces, %d process(es)",
        data.n_samples,
        data.steps_per_epoch,
        total_steps,
        tokenizer.vocab_size,
        rt.world_size,
    )
    log.info(
        "model %s: %.1fM parameters on %s (%s, %s), %d pairs per rank per step%s",
        cfg.model.variant,
        sum(p.numel() for p in model.parameters()) / 1e6,
        rt.device,
        tc.precision,
        tc.strategy if rt.group is not None else "1 process",
        min(tc.batch_size, data.n_samples) // rt.world_size,
        f" in micro-batches of {tc.micro_batch_size}" if tc.micro_batch_size else "",
    )


def autocast_for(cfg: Config, rt: Runtime) -> Callable:
    """A context factory: bf16 autocast when train.precision is bf16 (the loss stays fp32)."""
    if cfg.train.precision == "bf16":
        return lambda: torch.autocast(rt.device.type, dtype=torch.bfloat16)
    from contextlib import nullcontext

    return nullcontext
