"""Training and embedding throughput: ours against transformers' SiglipModel and open_clip, on the same
architecture and the same weights, in one run.

    python benchmarks/throughput.py                                   # B/16-224, batch 8, CPU: ~5 min on 2 cores
    python benchmarks/throughput.py --repeats 5 --tasks train         # training only
    python benchmarks/throughput.py --depth 2 --repeats 3             # B/16 widths, 2 blocks: a quick look
    python benchmarks/throughput.py --device cuda --batch-size 128 --compile --json

open_clip builds ViT-B-16-SigLIP (or L/16-256, So400m/14) with random weights; ours and transformers
are loaded from those weights (ours through siglip.interop's open_clip key rules), and the three
models' embeddings are checked to agree before anything is timed. Rows: training pairs/s (forward,
backward, AdamW step; each library's own loss and a default AdamW for the peers, ours as training
builds it), image-embedding img/s and text-embedding texts/s (inference mode), in fp32 and under
bf16 autocast. Each repeat times every model once, in rotated order (so slow drifts of a shared
machine hit all alike); the table shows medians, the ratios ours/peer, and MFU (siglip.flops: the
analytic FLOPs over the matmul peak measured at the end of the same run, or --peak-tflops).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from siglip import flops  # noqa: E402
from siglip.api import Model  # noqa: E402
from siglip.config import OptimConfig  # noqa: E402
from siglip.interop.hf import hf_config_json, hf_state  # noqa: E402
from siglip.interop.open_clip import open_clip_config, open_clip_rules  # noqa: E402
from siglip.interop.rules import apply_rules  # noqa: E402
from siglip.loss import sigmoid_loss  # noqa: E402
from siglip.model import SigLIP, set_fused_qkv  # noqa: E402
from siglip.optim import build_optimizer  # noqa: E402
from siglip.transforms import image_transform  # noqa: E402

OPEN_CLIP_NAMES = {"B/16": "ViT-B-16-SigLIP", "L/16": "ViT-L-16-SigLIP-256", "So400m/14": "ViT-SO400M-14-SigLIP"}
MODELS = ("ours", "transformers", "open_clip")
UNITS = {"train": "pairs/s", "image": "img/s", "text": "texts/s"}


# --------------------------------------------------------------------------------------------------
# The same weights in three libraries


def build_open_clip(size: str, depth: int):
    import open_clip

    model = open_clip.create_model(OPEN_CLIP_NAMES[size], pretrained=None)  # random weights
    if depth:  # fewer blocks for a quick run: both towers keep their first `depth`
        model.visual.trunk.blocks = model.visual.trunk.blocks[:depth]
        model.text.transformer.resblocks = model.text.transformer.resblocks[:depth]
        model.text.transformer.layers = depth
    return model


def ours_from_open_clip(state: dict) -> SigLIP:
    """Our model from an open_clip state dict, through the converter's key rules."""
    cfg = open_clip_config(state, Path("open_clip"))
    ours = SigLIP(cfg)
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict(apply_rules(open_clip_rules(cfg), state, shapes, "open_clip"))
    return ours


def transformers_from_ours(ours: SigLIP):
    """transformers' SiglipModel with our weights, through our Hugging Face export (siglip.interop.hf)."""
    from transformers import SiglipConfig, SiglipModel

    cfg, state = hf_state({"model_config": dataclasses.asdict(ours.config), "state_dict": ours.state_dict()})
    hf = SiglipModel(SiglipConfig(**hf_config_json(cfg)))
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return hf


# --------------------------------------------------------------------------------------------------
# What is timed: one training step, one image batch, one text batch


def ours_fns(model: SigLIP) -> dict:
    opt = build_optimizer(model, OptimConfig(lr=1e-5, warmup_steps=0))

    def train(pixels, ids):
        opt.zero_grad(set_to_none=True)
        zimg, ztxt = model(pixels, ids)
        sigmoid_loss(zimg, ztxt, model.t, model.b).backward()
        opt.step()

    # embedding through the public API, as `siglip.load(path)` returns it: Model.encode_image /
    # encode_text take the module's arguments and run the packed towers (siglip.inference), as
    # embed_images / embed_texts and the evaluations do
    use = Model(model, image_transform(model.config.image_size), tokenizer=None, path="benchmark")
    return {"train": train, "image": use.encode_image, "text": use.encode_text}


def transformers_fns(model) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def train(pixels, ids):
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, pixel_values=pixels, return_loss=True).loss.backward()
        opt.step()

    return {
        "train": train,
        "image": lambda p: F.normalize(model.get_image_features(pixel_values=p).pooler_output, dim=-1),
        "text": lambda i: F.normalize(model.get_text_features(input_ids=i).pooler_output, dim=-1),
    }


def open_clip_fns(model) -> dict:
    from open_clip.loss import SigLipLoss

    opt, loss = torch.optim.AdamW(model.parameters(), lr=1e-5), SigLipLoss()

    def train(pixels, ids):
        opt.zero_grad(set_to_none=True)
        loss(*model(pixels, ids)).backward()  # (zimg, ztxt, t, b): open_clip returns t already exp'd
        opt.step()

    return {
        "train": train,
        "image": lambda p: model.encode_image(p, normalize=True),
        "text": lambda i: model.encode_text(i, normalize=True),
    }


def check_same_outputs(models: dict, fns: dict, pixels, ids) -> float:
    """Largest difference of the peers' embeddings from ours (fp32): the weights really are shared."""
    with torch.inference_mode():
        want = [fns["ours"][k](x) for k, x in (("image", pixels), ("text", ids))]
        return max(
            (fns[m][k](x) - w).abs().max().item()
            for m in models
            if m != "ours"
            for (k, x), w in zip((("image", pixels), ("text", ids)), want)
        )


# --------------------------------------------------------------------------------------------------
# Timing


def time_call(fn, args, device: torch.device, precision: str, train: bool, steps: int) -> float:
    """Seconds per call of `fn(*args)`, over `steps` calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    with amp, nullcontext() if train else torch.inference_mode():
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn(*args)
        sync()
    return (time.perf_counter() - t0) / steps


def run(args, models: dict, fns: dict, pixels, ids, progress) -> dict:
    """{(task, precision): {model: [items/s per repeat]}}: models alternate within each repeat."""
    results: dict = {}
    inputs = {"train": (pixels, ids), "image": (pixels,), "text": (ids,)}
    for task in args.tasks:
        for m in models.values():  # training mode to train, eval mode to embed, for all three alike
            m.train(task == "train")
        for precision in args.precisions:
            row = results.setdefault((task, precision), {m: [] for m in models})
            for m in models:  # warm-up: first-call costs (allocator, kernels, compilation)
                time_call(fns[m][task], inputs[task], args.device, precision, task == "train", 1)
            for r in range(args.repeats):
                order = list(models)[r % len(models) :] + list(models)[: r % len(models)]
                for m in order:
                    dt = time_call(fns[m][task], inputs[task], args.device, precision, task == "train", args.steps)
                    row[m].append(args.batch_size / dt)
                    progress.update(1)
            medians = " ".join(f"{m}={statistics.median(v):.3f}" for m, v in row.items())
            progress.write(f"{task} {precision} {UNITS[task]}: {medians}")  # partial results survive an interrupt
    return results


def table(results: dict, cfg, args) -> list[dict]:
    per_item = {
        "train": flops.train_step_flops(cfg, args.batch_size) / args.batch_size,
        "image": flops.image_flops(cfg),
        "text": flops.text_flops(cfg),
    }
    rows, peaks = [], {}
    for (task, precision), by_model in results.items():
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        if dtype not in peaks:  # measured now, in the same run as the rates it divides
            peaks[dtype] = flops.peak_tflops(args.device, dtype, args.peak_tflops, fresh=True)
        peak = peaks[dtype]
        med = {m: statistics.median(v) for m, v in by_model.items()}
        row = {"task": task, "precision": precision, "unit": UNITS[task], "peak_tflops": peak}
        for m, v in med.items():
            row[m] = v
            row[f"mfu_{m}"] = per_item[task] * v / (peak * 1e12)
        for m in med:
            if m != "ours":
                row[f"ours/{m}"] = med["ours"] / med[m]
        rows.append(row)
    return rows


def print_table(rows: list[dict], models: tuple[str, ...]) -> None:
    head = f"{'task':<7}{'prec':<6}{'unit':<9}" + "".join(f"{m:>14}" for m in models)
    head += "".join(f"{'ours/' + m:>18}" for m in models[1:]) + "   MFU " + "/".join(models)
    print(head)
    for r in rows:
        line = f"{r['task']:<7}{r['precision']:<6}{r['unit']:<9}" + "".join(f"{r[m]:>14.3f}" for m in models)
        line += "".join(f"{r['ours/' + m]:>17.2f}x" for m in models[1:])
        print(line + "   " + " / ".join(f"{100 * r['mfu_' + m]:.0f}%" for m in models))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python benchmarks/throughput.py --size B/16 --batch-size 8 --repeats 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--size", default="B/16", choices=list(OPEN_CLIP_NAMES))
    p.add_argument("--depth", type=int, default=0, help="keep only this many blocks per tower (0 = all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile every model (all three alike)")
    p.add_argument("--fused-qkv", action="store_true", help="ours with one q/k/v product (siglip.model.set_fused_qkv)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=1, help="calls per timing")
    p.add_argument("--tasks", nargs="+", default=["train", "image", "text"], choices=list(UNITS))
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the matmul peak for MFU (0 = measure, cached)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    return args


def main(argv=None) -> None:
    from tqdm import tqdm

    args = parse_args(argv)
    torch.manual_seed(0)
    oc = build_open_clip(args.size, args.depth)
    ours = ours_from_open_clip(oc.state_dict())
    set_fused_qkv(ours, args.fused_qkv)
    models = {"ours": ours, "transformers": transformers_from_ours(ours), "open_clip": oc}
    cfg = ours.config
    for m in models.values():
        m.to(args.device)
    fns = {
        "ours": ours_fns(ours),
        "transformers": transformers_fns(models["transformers"]),
        "open_clip": open_clip_fns(oc),
    }
    if args.compile:
        fns = {m: {k: torch.compile(f) for k, f in d.items()} for m, d in fns.items()}
    pixels = torch.rand(args.batch_size, 3, cfg.image_size, cfg.image_size, device=args.device) * 2 - 1
    ids = torch.randint(0, cfg.vocab_size, (args.batch_size, cfg.text_length), device=args.device)
    diff = check_same_outputs(models, fns, pixels, ids)
    if diff > 1e-3:
        raise SystemExit(f"the three models disagree (embeddings differ by {diff:.2e}): not the same weights")
    total = len(args.tasks) * len(args.precisions) * args.repeats * len(models)
    with tqdm(total=total, desc="timing", file=sys.stderr, disable=args.json) as progress:
        rows = table(run(args, models, fns, pixels, ids, progress), cfg, args)
    threads = torch.get_num_threads() if args.device.type == "cpu" else None
    setup = dict(
        size=args.size, depth=args.depth or cfg.image.depth, batch_size=args.batch_size, device=str(args.device)
    )
    setup.update(
        compile=args.compile,
        fused_qkv=args.fused_qkv,
        repeats=args.repeats,
        steps=args.steps,
        threads=threads,
        max_diff=diff,
    )
    if args.json:
        print(json.dumps({"setup": setup, "rows": rows}, indent=1))
        return
    print(" ".join(f"{k}={v}" for k, v in setup.items()))
    print_table(rows, MODELS)


if __name__ == "__main__":
    main()
