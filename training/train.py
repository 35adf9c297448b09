"""Train SigLIP from scratch or fine-tune it, then evaluate.

    python training/train.py --config configs/demo_config.py                  # CPU, ~3 min, ~93-96% on digits
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

import logging
import sys
from pathlib import Path

import torch

from siglip.checkpoint import load_train_state, read_resumable, save_model
from siglip.config import to_dict
from siglip.distributed import close_runtime, full_model_state, init_runtime
from siglip.eval.evaluators import check_evals
from siglip.loss import loss_from_config
from siglip.optim import build_optimizer, build_scheduler
from siglip.train.args import parse_train_args, run_name
from siglip.train.build import (
    adopt_checkpoint_config,
    autocast_for,
    build_data,
    build_model,
    build_tokenizer,
    find_source,
    log_run,
    starting_payload,
    write_config,
)
from siglip.train.guard import DivergenceGuard
from siglip.train.loggers import scalar_sinks
from siglip.train.loop import Meter, evals_due, evaluate, save_checkpoint, train_step
from siglip.train.metrics_log import MetricsLog
from siglip.train.resume import world_size_note

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("train")

# --------------------------------------------------------------------------------------------------
# Config and runtime
try:
    run = parse_train_args(sys.argv[1:])  # the config file, flags and --config.KEY=VALUE, validated
except (KeyError, ValueError, FileNotFoundError) as e:  # a wrong key or value: say which, no traceback
    sys.exit(f"training/train.py: {e.args[0] if isinstance(e, KeyError) else e}")
cfg, tc = run.config, run.config.train
check_evals(cfg.evals)  # a misnamed evaluator or a missing path fails now, not after training
rt = init_runtime(tc.device)  # torchrun / SLURM variables -> process group; else one process
if not rt.is_main:
    logging.getLogger().setLevel(logging.WARNING)  # rank 0 alone logs, shows progress and writes files
torch.manual_seed(tc.seed)  # the same initial weights on every rank (FSDP2 shards what each rank made)
out_dir = Path(tc.output_dir)
checkpoint_path = out_dir / "checkpoint.pt"

# --------------------------------------------------------------------------------------------------
# Starting weights, tokenizer, data
if run.resume:  # the newest checkpoint that verifies (digest, structure, finite); broken ones are logged
    payload, checkpoint_path = read_resumable(out_dir)
else:
    payload = starting_payload(tc, False, checkpoint_path)  # None when training from scratch
adopt_checkpoint_config(cfg, payload)  # a checkpoint's architecture and preprocessing win
write_config(cfg, out_dir, rt)  # the config actually trained
source = find_source(cfg)
tokenizer = build_tokenizer(cfg, payload, source, rt)
data = build_data(cfg, source, tokenizer, rt)
total_steps = tc.epochs * data.steps_per_epoch if tc.epochs > 0 else tc.steps
tables = source.tables is not None
if run.resume and (note := world_size_note(payload.get("world_size"), rt.world_size, source.streaming, tables)):
    log.warning(note)

# --------------------------------------------------------------------------------------------------
# Model, loss, optimizer
model, forward = build_model(cfg, payload, checkpoint_path if run.resume else tc.pretrained_path, rt)
# zimg, ztxt, t, b -> the loss over the GLOBAL batch from this rank's embeddings (the paper's ring)
compute_loss = loss_from_config(cfg.loss, group=rt.group)
optimizer = build_optimizer(model, cfg.optim)
scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
step = load_train_state(payload, model, optimizer, scheduler, checkpoint_path) if run.resume else 0
guard = DivergenceGuard(tc.nonfinite_patience, step=step)  # NaN/inf steps skipped; K in a row stop the run
if run.resume:
    guard.last_good = f"{checkpoint_path} (step {step})"
del payload
log_run(cfg, data, total_steps, tokenizer, model, rt)
autocast = autocast_for(cfg, rt)

# --------------------------------------------------------------------------------------------------
# Training loop
sinks = scalar_sinks(cfg.log, out_dir, to_dict(cfg)) if rt.is_main else []  # TensorBoard, W&B: same scalars
metrics = MetricsLog(out_dir / "metrics.jsonl", total_steps, step, enabled=rt.is_main, sinks=sinks)
if run.resume:
    metrics.write({"step": step, "resumed": True})  # reports mark where a run continued
meter = Meter(rt, cfg)  # pairs/s and MFU in metrics.jsonl and the progress bar
model.train()
end_step = min(total_steps, tc.stop_at_step) if tc.stop_at_step else total_steps
while step < end_step:
    for batch in data.batches(step // data.steps_per_epoch, step % data.steps_per_epoch):
        loss = train_step(batch, forward, model, compute_loss, optimizer, scheduler, cfg, rt, autocast, meter, guard)
        if loss is None:  # no readable image in this batch on any rank
            continue
        step += 1
        metrics.step()
        if step % tc.log_every == 0 or step == end_step:
            guard.poll()  # the non-finite flags since the last logged step: warnings, counts, the patience stop
            lr = scheduler.get_last_lr()[0]
            metrics.write({**meter.record(step, loss, lr, model, guard.last_skipped), **guard.record()})
        if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < end_step:
            save_checkpoint(checkpoint_path, model, optimizer, scheduler, tokenizer, cfg, step, rt, guard)
        if evals_due(cfg, step, total_steps):
            metrics.write({"step": step, **evaluate(cfg, model, tokenizer, step)})
        if step >= end_step:
            break

# --------------------------------------------------------------------------------------------------
# Save and evaluate
save_checkpoint(checkpoint_path, model, optimizer, scheduler, tokenizer, cfg, step, rt, guard)
if step < total_steps:
    metrics.close()
    log.info("stopped at step %d of %d (train.stop_at_step); continue with --resume", step, total_steps)
    close_runtime(rt)
    sys.exit(0)
final_path = out_dir / f"siglip_{run_name(run.config_path)}.pt"
final_state = full_model_state(model)  # every rank takes part in gathering a sharded model
if rt.is_main:
    save_model(final_path, model, tokenizer, cfg.data.resample, final_state, cfg.data.max_num_patches)
    log.info("saved %s", final_path)
if cfg.evals:  # every rank evaluates (a sharded model needs them all); rank 0 reports
    results = evaluate(cfg, model, tokenizer, None, out_dir / "eval" if rt.is_main else None, step)
    metrics.write({"step": step, **results})
    if rt.is_main:
        for k, v in results.items():
            print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
metrics.close()
close_runtime(rt)
