"""Train SigLIP from scratch or fine-tune it, then evaluate.

    python training/train.py --config configs/demo_config.py                  # CPU, ~3 min, ~95% on digits
    python training/train.py --config configs/base_config.py --data-path DATA --batch-size 256 \
        --learning-rate 1e-4 --epochs 50 --output-dir ./checkpoints             # -> checkpoints/siglip_base.pt
    python training/train.py --config configs/base_config.py --pretrained-path ./checkpoints/siglip_base.pt \
        --data-path DATA --batch-size 128 --learning-rate 5e-5 --epochs 10
    torchrun --standalone --nproc_per_node 2 training/train.py --config configs/demo_config.py  # 2 CPU ranks
    torchrun --nnodes 4 --nproc_per_node 8 ... training/train.py --config configs/base_config.py \
        --data-path '/data/laion/{00000..09999}.tar' --batch-size 32768 --config.train.strategy=fsdp

--batch-size is the global batch (each rank takes 1/world_size of it). --config.train.micro_batch_size=M
gives the exact full-batch gradient in pieces of M pairs per rank (GradCache).

Any config field: --config.KEY=VALUE (e.g. --config.train.precision=bf16). --resume continues from
OUTPUT_DIR/checkpoint.pt. Writes OUTPUT_DIR/{config.json, metrics.jsonl, checkpoint.pt, siglip_<name>.pt}.
"""

import json
import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from siglip.accumulate import forward_backward
from siglip.checkpoint import (
    load_train_state,
    read_checkpoint,
    save_model,
    save_train_state,
    tokenizer_from_payload,
)
from siglip.config import model_config_from_dict, parse_train_args, run_name, to_dict
from siglip.convert import load_into, load_pretrained
from siglip.data import PairDataset, epoch_loader, find_pairs, steps_per_epoch
from siglip.distributed import (
    barrier,
    broadcast_object,
    clip_grad_norm,
    close_runtime,
    common_batch_size,
    full_model_state,
    full_optimizer_state,
    init_runtime,
    sum_over_ranks,
    sync_replicated_grads,
    wrap_model,
)
from siglip.evaluators import check_evals, run_evals
from siglip.loggers import scalar_sinks
from siglip.loss import loss_from_config
from siglip.metrics_log import MetricsLog
from siglip.model import SigLIP
from siglip.optim import build_optimizer, build_scheduler, freeze_towers
from siglip.tokenizer import Tokenizer
from siglip.transforms import image_transform
from siglip.webdataset import TarStream, count_samples, is_shard_pattern, read_captions, shard_list, stream_loader

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("train")

# --------------------------------------------------------------------------------------------------
# Config and runtime
run = parse_train_args(sys.argv[1:])
cfg, tc = run.config, run.config.train
check_evals(cfg.evals)  # a misnamed evaluator fails now, not after the first training steps
rt = init_runtime(tc.device)  # torchrun / SLURM variables -> process group; else one process
if not rt.is_main:
    logging.getLogger().setLevel(logging.WARNING)  # rank 0 alone logs, shows progress and writes files
out_dir = Path(tc.output_dir)
if rt.is_main:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
device = rt.device
torch.manual_seed(tc.seed)  # the same initial weights on every rank (FSDP2 shards what each rank made)
if tc.batch_size % rt.world_size:
    raise ValueError(f"--batch-size {tc.batch_size} does not split over {rt.world_size} processes")
local_batch = tc.batch_size // rt.world_size
bf16 = tc.precision == "bf16"
if tc.precision not in ("fp32", "bf16"):
    raise ValueError(f"train.precision must be fp32 or bf16, got {tc.precision!r}")
autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
checkpoint_path = out_dir / "checkpoint.pt"

# --------------------------------------------------------------------------------------------------
# Data and tokenizer: the model file carries its tokenizer, so a fine-tune or a resume reuses it
streaming = is_shard_pattern(cfg.data.path)
if streaming:
    shards = shard_list(cfg.data.path)
else:
    pairs = find_pairs(cfg.data.path, cfg.data.image_column, cfg.data.caption_column, cfg.data.digits_root)
if run.resume:
    payload = read_checkpoint(checkpoint_path)
elif tc.pretrained_path:  # any format: ours, Hugging Face, open_clip, big_vision (siglip.convert)
    payload = load_pretrained(tc.pretrained_path, tc.pretrained_tokenizer or None, tc.finetune_image_size)
    if payload.get("partial") == "text":
        raise ValueError(f"{tc.pretrained_path}: a text tower alone; fine-tuning needs a full model or an image tower")
else:
    payload = None
if payload is not None and not payload.get("partial"):
    tokenizer = tokenizer_from_payload(payload)
    cfg.model = model_config_from_dict(payload["model_config"])  # the weights decide the architecture
    cfg.data.resample = payload["preprocess"]["resample"]  # and the checkpoint's preprocessing
elif cfg.tokenizer.path:
    tokenizer = Tokenizer.from_file(cfg.tokenizer.path, cfg.model.text_length)
else:  # trained on rank 0 (on the first 100k captions of a stream), sent to the others
    proto = None
    if rt.is_main:
        captions = read_captions(shards, 100_000, cfg.data.caption_column) if streaming else [c for _, c in pairs]
        proto = Tokenizer.train(
            captions, cfg.tokenizer.vocab_size, cfg.model.text_length, cfg.tokenizer.model_type
        ).proto
    tokenizer = Tokenizer(broadcast_object(proto, rt), cfg.model.text_length)
if tokenizer.vocab_size > cfg.model.vocab_size:
    raise ValueError(f"tokenizer has {tokenizer.vocab_size} pieces, model.vocab_size is {cfg.model.vocab_size}")
transform = image_transform(
    cfg.model.image_size,
    cfg.data.resample,
    random_resized_crop=cfg.data.random_resized_crop,
    crop_scale_min=cfg.data.crop_scale_min,
    horizontal_flip=cfg.data.horizontal_flip,
    color_jitter=cfg.data.color_jitter,
)
if streaming:
    if cfg.data.resampled and not cfg.data.epoch_samples:
        raise ValueError("data.resampled streams have no end: set data.epoch_samples (samples per epoch)")
    n_samples = cfg.data.epoch_samples or count_samples(shards)
    dataset = TarStream(
        shards,
        transform,
        tokenizer,
        local_batch,
        rank=rt.rank,
        world_size=rt.world_size,
        seed=tc.seed,
        shuffle_buffer=cfg.data.shuffle_buffer,
        resampled=cfg.data.resampled,
        repeat=True,
        caption_key=cfg.data.caption_column,
    )
else:
    dataset = PairDataset(pairs, transform, seed=tc.seed)
    n_samples = len(dataset)
spe = steps_per_epoch(n_samples, tc.batch_size)
total_steps = tc.epochs * spe if tc.epochs > 0 else tc.steps
if tc.batch_size > n_samples:
    log.warning("batch size %d > %d pairs: each step uses all of them", tc.batch_size, n_samples)
log.info(
    "%d pairs%s, %d steps per epoch, %d steps, tokenizer with %d pieces, %d process(es)",
    n_samples,
    f" in {len(shards)} shards" if streaming else "",
    spe,
    total_steps,
    tokenizer.vocab_size,
    rt.world_size,
)


def epoch_batches(epoch: int, start: int):
    """This rank's batches of `epoch` from batch `start` on."""
    if streaming:
        return stream_loader(dataset, epoch, start, spe, cfg.data.num_workers)
    return epoch_loader(dataset, tokenizer, tc.batch_size, epoch, start, cfg.data.num_workers, rt.rank, rt.world_size)


# --------------------------------------------------------------------------------------------------
# Model, loss, optimizer
model = SigLIP(cfg.model)
if payload is not None:
    load_into(model, payload, checkpoint_path if run.resume else tc.pretrained_path)
model.to(device)
model.image.encoder.checkpoint_blocks = model.text.encoder.checkpoint_blocks = tc.activation_checkpointing
if cfg.loss.name == "softmax":
    model.b.requires_grad_(False)  # a softmax ignores b: DDP must not wait for its gradient
freeze_towers(model, cfg.optim)  # SigLiT (lr multiplier 0) before wrapping: DDP must know what trains
forward = wrap_model(model, rt, tc.strategy)  # DDP wrapper, or `model` sharded in place (FSDP2)
# zimg, ztxt, t, b -> the loss over the GLOBAL batch from this rank's embeddings (the paper's ring)
compute_loss = loss_from_config(cfg.loss, group=rt.group)
optimizer = build_optimizer(model, cfg.optim)
scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
step = load_train_state(payload, model, optimizer, scheduler, checkpoint_path) if run.resume else 0
del payload
log.info(
    "model %s: %.1fM parameters on %s (%s, %s), %d pairs per rank per step%s",
    cfg.model.variant,
    sum(p.numel() for p in model.parameters()) / 1e6,
    device,
    tc.precision,
    tc.strategy if rt.group is not None else "1 process",
    min(tc.batch_size, n_samples) // rt.world_size,
    f" in micro-batches of {tc.micro_batch_size}" if tc.micro_batch_size else "",
)


def save_checkpoint() -> None:
    """Whole (gathered) model and optimizer state, written by rank 0: resumes under any strategy."""
    model_state, optimizer_state = full_model_state(model), full_optimizer_state(model, optimizer)
    if rt.is_main:
        save_train_state(
            checkpoint_path,
            model,
            tokenizer,
            cfg.data.resample,
            optimizer,
            scheduler,
            step,
            to_dict(cfg),
            model_state=model_state,
            optimizer_state=optimizer_state,
        )
    barrier(rt)


def evaluate(at_step, outputs_dir=None):
    return run_evals(
        cfg.evals,
        model,
        tokenizer,
        cfg.model.image_size,
        cfg.data.resample,
        cfg.data.digits_root,
        cfg.data.num_workers,
        bf16,
        at_step,
        outputs_dir,
        step,
    )


# --------------------------------------------------------------------------------------------------
# Training loop
sinks = scalar_sinks(cfg.log, out_dir, to_dict(cfg)) if rt.is_main else []  # TensorBoard, W&B: same scalars
metrics = MetricsLog(out_dir / "metrics.jsonl", total_steps, step, enabled=rt.is_main, sinks=sinks)
if run.resume:
    metrics.write({"step": step, "resumed": True})  # reports mark where a run continued
model.train()
seen, skipped, t_last = 0, 0, time.perf_counter()
end_step = min(total_steps, tc.stop_at_step) if tc.stop_at_step else total_steps
while step < end_step:
    for batch in epoch_batches(step // spe, step % spe):
        n = common_batch_size(0 if batch["pixels"] is None else batch["pixels"].shape[0], rt)
        skipped += batch["skipped"] + (0 if batch["pixels"] is None else batch["pixels"].shape[0] - n)
        if n == 0:
            continue
        pixels = batch["pixels"][:n].to(device, non_blocking=True)
        ids = batch["ids"][:n].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = forward_backward(forward, model, pixels, ids, compute_loss, tc.micro_batch_size, autocast)
        sync_replicated_grads(model, forward, rt)  # t' and b under FSDP2
        grad_norm = clip_grad_norm(model, cfg.optim.grad_clip, rt) if cfg.optim.grad_clip > 0 else None
        optimizer.step()
        scheduler.step()
        step += 1
        seen += pixels.shape[0] * rt.world_size
        metrics.step()
        if step % tc.log_every == 0 or step == end_step:
            now = time.perf_counter()
            metrics.write(
                {
                    "step": step,
                    "loss": loss.item(),
                    "lr": scheduler.get_last_lr()[0],
                    "t": model.t.item(),
                    "b": model.b.item(),
                    "images_per_s": seen / (now - t_last),
                    "skipped": int(sum_over_ranks(skipped, rt)),
                    **({} if grad_norm is None else {"grad_norm": grad_norm.item()}),  # before clipping
                }
            )
            seen, t_last = 0, now
        if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < end_step:
            save_checkpoint()
        if cfg.evals and step < total_steps and any(e.every and step % e.every == 0 for e in cfg.evals):
            metrics.write({"step": step, **evaluate(step)})
        if step >= end_step:
            break

# --------------------------------------------------------------------------------------------------
# Save and evaluate
save_checkpoint()
if step < total_steps:
    metrics.close()
    log.info("stopped at step %d of %d (train.stop_at_step); continue with --resume", step, total_steps)
    close_runtime(rt)
    sys.exit(0)
final_path = out_dir / f"siglip_{run_name(run.config_path)}.pt"
final_state = full_model_state(model)
if rt.is_main:
    save_model(final_path, model, tokenizer, cfg.data.resample, state_dict=final_state)
    log.info("saved %s", final_path)
if cfg.evals:  # every rank evaluates (a sharded model needs them all); rank 0 reports
    results = evaluate(None, out_dir / "eval" if rt.is_main else None)  # + per-example outputs for reports
    metrics.write({"step": step, **results})
    if rt.is_main:
        for k, v in results.items():
            print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
metrics.close()
close_runtime(rt)
