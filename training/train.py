"""Train SigLIP from scratch or fine-tune it, then evaluate.

    python training/train.py --config configs/demo_config.py                  # CPU, ~3 min, ~95% on digits
    python training/train.py --config configs/base_config.py --data-path DATA --batch-size 256 \
        --learning-rate 1e-4 --epochs 50 --output-dir ./checkpoints             # -> checkpoints/siglip_base.pt
    python training/train.py --config configs/base_config.py --pretrained-path ./checkpoints/siglip_base.pt \
        --data-path DATA --batch-size 128 --learning-rate 5e-5 --epochs 10

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
from siglip.evaluators import run_evals
from siglip.loss import get_loss
from siglip.metrics_log import MetricsLog
from siglip.model import SigLIP
from siglip.optim import build_optimizer, build_scheduler
from siglip.tokenizer import Tokenizer
from siglip.transforms import image_transform

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("train")

# --------------------------------------------------------------------------------------------------
# Config and runtime
run = parse_train_args(sys.argv[1:])
cfg, tc = run.config, run.config.train
out_dir = Path(tc.output_dir)
out_dir.mkdir(parents=True, exist_ok=True)
(out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if tc.device == "auto" else tc.device)
torch.manual_seed(tc.seed)
bf16 = tc.precision == "bf16"
if tc.precision not in ("fp32", "bf16"):
    raise ValueError(f"train.precision must be fp32 or bf16, got {tc.precision!r}")
autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
checkpoint_path = out_dir / "checkpoint.pt"

# --------------------------------------------------------------------------------------------------
# Data and tokenizer: the model file carries its tokenizer, so a fine-tune or a resume reuses it
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
else:
    tokenizer = Tokenizer.train(
        [c for _, c in pairs], cfg.tokenizer.vocab_size, cfg.model.text_length, cfg.tokenizer.model_type
    )
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
dataset = PairDataset(pairs, transform, seed=tc.seed)
spe = steps_per_epoch(len(dataset), tc.batch_size)
total_steps = tc.epochs * spe if tc.epochs > 0 else tc.steps
if tc.batch_size > len(dataset):
    log.warning("batch size %d > %d pairs: each step uses all of them", tc.batch_size, len(dataset))
log.info(
    "%d pairs, %d steps per epoch, %d steps, tokenizer with %d pieces",
    len(dataset),
    spe,
    total_steps,
    tokenizer.vocab_size,
)

# --------------------------------------------------------------------------------------------------
# Model, loss, optimizer
model = SigLIP(cfg.model)
if payload is not None:
    load_into(model, payload, checkpoint_path if run.resume else tc.pretrained_path)
model.to(device)
loss_fn = get_loss(cfg.loss.name)
optimizer = build_optimizer(model, cfg.optim)
scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
step = load_train_state(checkpoint_path, model, optimizer, scheduler) if run.resume else 0
del payload
log.info(
    "model %s: %.1fM parameters on %s (%s)",
    cfg.model.variant,
    sum(p.numel() for p in model.parameters()) / 1e6,
    device,
    tc.precision,
)


def save_checkpoint() -> None:
    save_train_state(checkpoint_path, model, tokenizer, cfg.data.resample, optimizer, scheduler, step, to_dict(cfg))


def evaluate(at_step):
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
    )


# --------------------------------------------------------------------------------------------------
# Training loop
metrics = MetricsLog(out_dir / "metrics.jsonl", total_steps, step)
model.train()
seen, skipped, t_last = 0, 0, time.perf_counter()
end_step = min(total_steps, tc.stop_at_step) if tc.stop_at_step else total_steps
while step < end_step:
    loader = epoch_loader(dataset, tokenizer, tc.batch_size, step // spe, step % spe, cfg.data.num_workers)
    for batch in loader:
        skipped += batch["skipped"]
        if batch["pixels"] is None:
            continue
        pixels, ids = (
            batch["pixels"].to(device, non_blocking=True),
            batch["ids"].to(device, non_blocking=True),
        )
        with autocast():
            zimg, ztxt = model(pixels, ids)
        loss = loss_fn(zimg, ztxt, model.t, model.b)  # float32 inside
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        seen += pixels.shape[0]
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
                    "skipped": skipped,
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
    sys.exit(0)
final_path = out_dir / f"siglip_{run_name(run.config_path)}.pt"
save_model(final_path, model, tokenizer, cfg.data.resample)
log.info("saved %s", final_path)
if cfg.evals:
    results = evaluate(None)
    metrics.write({"step": step, **results})
    for k, v in results.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
metrics.close()
