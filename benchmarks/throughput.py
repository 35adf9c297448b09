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

On a CPU it first prints what decides our speed there: the CPU's model and flags (avx2, avx512f,
avx512_bf16, amx), whether oneDNN has bf16 kernels, the fp32 and bf16 matmul peaks, and which path
ours embeds through per precision (`siglip.inference`'s packed copy or the module, as
`siglip.inference_choice` timed it). After the table, GFLOP/s and % of the peak of ours and
transformers for embedding, and the targets: bf16 embedding at least 2x transformers on an AMX CPU
and at least 75% of the bf16 matmul peak elsewhere (none without native bf16: it is emulated there),
fp32 at least 1.0x transformers everywhere.
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
# The CPU: flags, peaks, the path ours takes

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> dict[str, bool]:
    """The flags that decide CPU matmul speed, from /proc/cpuinfo (all False where it is absent)."""
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
        have = set(line.split(":", 1)[1].split())
    except (OSError, StopIteration):
        have = set()
    return {f: f in have for f in CPU_FLAGS}


def our_path(ours: SigLIP, precision: str) -> str:
    """Which path ours embeds through at `precision` here (after the first call has chosen)."""
    from siglip import inference, inference_choice

    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    with amp:
        dtype = inference.compute_dtype(ours.image)
    if dtype is None:
        return "module (no oneDNN packed kernels for this dtype here)"
    chosen = inference_choice.decided(ours.image, dtype)
    return {True: "packed copy", False: "module (timed faster here)", None: "not chosen yet"}[chosen]


def cpu_report(args, ours: SigLIP) -> dict:
    """The CPU's flags, matmul peaks (measured now: a 2048^2 product, 512^2 for bf16 without oneDNN
    bf16 kernels, where one 2048^2 product takes minutes) and the path ours takes per precision."""
    flags, bf16 = cpu_flags(), torch.ops.mkldnn._is_mkldnn_bf16_supported()
    fp32_peak = flops.measure_matmul_tflops(args.device, torch.float32)
    bf16_peak = flops.measure_matmul_tflops(args.device, torch.bfloat16, size=0 if bf16 else 512)
    return {
        "cpu": flops.device_name(args.device),
        "flags": flags,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_bf16": bool(bf16),
        "peak_tflops": {"fp32": fp32_peak, "bf16": bf16_peak},
        "ours_path": {p: our_path(ours, p) for p in args.precisions},
    }


def print_cpu(cpu: dict) -> None:
    flags = " ".join(f"{f}={'yes' if v else 'no'}" for f, v in cpu["flags"].items())
    print(f"cpu: {cpu['cpu']}  {flags}  torch capability {cpu['capability']}  oneDNN bf16 {cpu['onednn_bf16']}")
    peaks = cpu["peak_tflops"]
    print(
        f"matmul peak (best of torch and oneDNN packed): fp32 {1e3 * peaks['fp32']:.1f} GFLOP/s, "
        f"bf16 {1e3 * peaks['bf16']:.2f} GFLOP/s"
    )
    print("ours embeds through: " + ", ".join(f"{p} {path}" for p, path in cpu["ours_path"].items()))


def print_targets(rows: list[dict], cpu: dict) -> None:
    """GFLOP/s and % of the dtype's matmul peak for embedding, and the issue's targets."""
    amx = cpu["flags"]["amx_bf16"]
    for r in rows:
        if r["task"] == "train" or "transformers" not in r:
            continue
        peak = 1e3 * cpu["peak_tflops"][r["precision"]]
        ours, peer = r["gflops_ours"], r["gflops_transformers"]
        line = (
            f"{r['task']:<6}{r['precision']:<5} ours {ours:7.1f} GFLOP/s ({100 * ours / peak:3.0f}% of peak)  "
            f"transformers {peer:7.1f} GFLOP/s ({100 * peer / peak:3.0f}%)  ratio {ours / peer:.2f}x  target: "
        )
        if r["precision"] == "fp32":
            goal, met = ">= 1.0x transformers", ours >= peer
        elif not cpu["onednn_bf16"]:  # bf16 emulated: slower than fp32 for everyone, no target
            print(line + "none (no native bf16 on this CPU: fp32 is the faster choice here)")
            continue
        elif amx:
            goal, met = ">= 2x transformers (AMX)", ours >= 2 * peer
        else:
            goal, met = ">= 75% of the bf16 peak (no AMX)", ours >= 0.75 * peak
        print(line + goal + (" MET" if met else " NOT MET"))


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


def table(results: dict, cfg, args, peaks: dict) -> list[dict]:
    """The rows; `peaks` (dtype -> TFLOP/s) holds the peaks measured so far in this run."""
    per_item = {
        "train": flops.train_step_flops(cfg, args.batch_size) / args.batch_size,
        "image": flops.image_flops(cfg),
        "text": flops.text_flops(cfg),
    }
    rows = []
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
            row[f"gflops_{m}"] = per_item[task] * v / 1e9
        for m in med:
            if m != "ours":
                row[f"ours/{m}"] = med["ours"] / med[m]
        rows.append(row)
    return rows


def print_table(rows: list[dict], models: list[str]) -> None:
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
    p.add_argument("--peers", nargs="*", default=list(MODELS[1:]), choices=MODELS[1:], help="peers to time")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the matmul peak for MFU (0 = measure, cached)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    return args


def build(args) -> tuple[dict, dict]:
    """The models (ours and the peers asked for, the same weights) and their timed functions."""
    torch.manual_seed(0)
    oc = build_open_clip(args.size, args.depth)
    ours = ours_from_open_clip(oc.state_dict())
    set_fused_qkv(ours, args.fused_qkv)
    models = {"ours": ours, "transformers": transformers_from_ours(ours) if "transformers" in args.peers else None}
    models["open_clip"] = oc
    models = {m: v for m, v in models.items() if m == "ours" or m in args.peers}
    for m in models.values():
        m.to(args.device)
    make = {"ours": ours_fns, "transformers": transformers_fns, "open_clip": open_clip_fns}
    fns = {m: make[m](v) for m, v in models.items()}
    if args.compile:
        fns = {m: {k: torch.compile(f) for k, f in d.items()} for m, d in fns.items()}
    return models, fns


def main(argv=None) -> None:
    import logging

    from tqdm import tqdm

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # siglip.inference's choice
    models, fns = build(args)
    cfg = models["ours"].config
    pixels = torch.rand(args.batch_size, 3, cfg.image_size, cfg.image_size, device=args.device) * 2 - 1
    ids = torch.randint(0, cfg.vocab_size, (args.batch_size, cfg.text_length), device=args.device)
    diff = check_same_outputs(models, fns, pixels, ids) if len(models) > 1 else 0.0
    if diff > 1e-3:
        raise SystemExit(f"the models disagree (embeddings differ by {diff:.2e}): not the same weights")
    total = len(args.tasks) * len(args.precisions) * args.repeats * len(models)
    with tqdm(total=total, desc="timing", file=sys.stderr, disable=args.json) as progress:
        results = run(args, models, fns, pixels, ids, progress)
    cpu = cpu_report(args, models["ours"]) if args.device.type == "cpu" else None
    peaks = (
        {} if cpu is None else {torch.float32: cpu["peak_tflops"]["fp32"], torch.bfloat16: cpu["peak_tflops"]["bf16"]}
    )
    rows = table(results, cfg, args, peaks)
    threads = torch.get_num_threads() if args.device.type == "cpu" else None
    keys = ("size", "depth", "batch_size", "device", "compile", "fused_qkv", "repeats", "steps")
    setup = {k: str(getattr(args, k)) if k == "device" else getattr(args, k) for k in keys}
    setup.update(depth=args.depth or cfg.image.depth, threads=threads, max_diff=diff)
    if args.json:
        print(json.dumps({"setup": setup, "cpu": cpu, "rows": rows}, indent=1))
        return
    print(" ".join(f"{k}={v}" for k, v in setup.items()))
    if cpu is not None:
        print_cpu(cpu)
    print_table(rows, list(models))
    if cpu is not None:
        print_targets(rows, cpu)


if __name__ == "__main__":
    main()
