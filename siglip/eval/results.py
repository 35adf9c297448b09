"""Evaluation results: the printed table and the JSON file in CLIP_benchmark's layout.

    {"dataset": "imagenet1k", "model": "B/16", "pretrained": "checkpoints/siglip_base.pt",
     "task": "zeroshot_classification", "metrics": {"acc1": 0.76, ...}, "language": "en"}

`task` is "zeroshot_classification" or "zeroshot_retrieval"; metric names are CLIP_benchmark's, so
files from both tools can be tabled together.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Our dataset names -> CLIP_benchmark's.
BENCHMARK_NAMES = {"imagenet": "imagenet1k", "flickr30k": "flickr30k", "coco": "mscoco_captions"}


def benchmark_record(dataset: str, model: str, pretrained: str, task: str, metrics: dict[str, float]) -> dict:
    return {
        "dataset": BENCHMARK_NAMES.get(dataset, dataset),
        "model": model,
        "pretrained": pretrained,
        "task": task,
        "metrics": metrics,
        "language": "en",
    }


def write_results(path: str | Path, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def output_file(output: str, dataset: str, task: str, listed: bool) -> str:
    """Where a set's result goes: `--output` as given for one set. For a list of sets (clip_benchmark's
    task lists), one file per set: `--output` with `{dataset}` and `{task}` filled in, or else a folder
    (default: the current one) holding `<dataset>_<task>.json` ('/' in the name -> '_')."""
    if not listed:
        return output
    slug = dataset.replace("/", "_")
    if "{dataset}" in output:
        return output.format(dataset=slug, task=task)
    return str(Path(output or ".") / f"{slug}_{task}.json")


def save_set_results(output: str, name: str, model, model_path: str, task: str, metrics: dict, listed: bool) -> None:
    """--output for one set of an evaluation script: CLIP_benchmark's record of `metrics` written where
    `output_file` says (nothing without --output), and a line saying so."""
    if path := output_file(output, name, task, listed):
        write_results(path, benchmark_record(name, model.config.variant, model_path, task, metrics))
        print(f"wrote {path}")


def format_table(metrics: dict[str, float]) -> str:
    """Two aligned columns: metric, value (recalls and accuracies as percentages)."""
    width = max(len(k) for k in metrics)
    lines = []
    for k, v in metrics.items():
        if isinstance(v, float) and ("acc" in k or "recall" in k):
            lines.append(f"{k:<{width}}  {100 * v:7.2f} %")
        elif isinstance(v, float):
            lines.append(f"{k:<{width}}  {v:7.2f}")
        else:
            lines.append(f"{k:<{width}}  {v:7d}")
    return "\n".join(lines)


def eval_arguments(description: str, datasets: tuple[str, ...] | list[str], data_help: str, split_help: str):
    """The command line both evaluation scripts share; each adds its own flags to the parser."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--model-path",
        required=True,
        help="a model: ours, Hugging Face, open_clip or big_vision, or a Hub id (org/name[@revision])",
    )
    parser.add_argument("--dataset", required=True, choices=datasets)
    parser.add_argument("--data-path", required=True, help=data_help)
    parser.add_argument("--split", default="", help=split_help)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--num-workers",
        type=int,
        default=min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1),
        help="processes that decode and resize images (default: 4, at most the CPUs this process may use)",
    )
    parser.add_argument("--device", default="auto", help="auto = cuda if available, else cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the towers")
    parser.add_argument("--output", default="", help="write the results here as JSON (CLIP_benchmark's layout)")
    return parser
