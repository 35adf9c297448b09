"""Zero-shot classification of a SigLIP model (SPEC section 7): acc1, acc5, mean_per_class_recall.

    python evaluation/zero_shot.py --model-path ./checkpoints/siglip_base.pt --dataset imagenet --data-path /data/imagenet
    python evaluation/zero_shot.py --model-path runs/demo/siglip_demo.pt --dataset digits --data-path data/digits
    -> a progress bar, a small table, and with --output results.json the result in CLIP_benchmark's layout

Datasets: imagenet (synset folders, flat val + devkit, or Kaggle's layout: detected), cifar10 and
cifar100 (the python pickles; --split test|train), folder (one sub-folder per class), digits (the
bundled demo's held-out split). --templates / --classnames: your own lists, one entry per line.
"""

import argparse
import logging

import torch

import siglip
from siglip.eval_data import ZERO_SHOT_DATASETS, classification_set
from siglip.results import benchmark_record, format_table, write_results
from siglip.zero_shot import evaluate_zero_shot

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

parser = argparse.ArgumentParser(description="Zero-shot classification of a SigLIP model.")
parser.add_argument("--model-path", required=True, help="a siglip model file (what training writes)")
parser.add_argument("--dataset", required=True, choices=ZERO_SHOT_DATASETS)
parser.add_argument("--data-path", required=True, help="the dataset folder (for digits: where it is written)")
parser.add_argument("--split", default="", help="'' = val (imagenet), test (cifar), heldout (digits)")
parser.add_argument("--templates", default="", help="file of prompt templates, one per line with {}")
parser.add_argument("--classnames", default="", help="file of class names, one per line in label order")
parser.add_argument("--batch-size", type=int, default=256)
parser.add_argument("--num-workers", type=int, default=4, help="processes that decode and resize images")
parser.add_argument("--device", default="auto", help="auto = cuda if available, else cpu")
parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the towers")
parser.add_argument("--output", default="", help="write the results here as JSON (CLIP_benchmark's layout)")
args = parser.parse_args()

device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
model = siglip.load(args.model_path, device=device)
data = classification_set(args.dataset, args.data_path, args.split, args.classnames, args.templates)
print(f"{args.dataset}: {len(data.labels)} images, {len(data.classnames)} classes, {len(data.templates)} templates")
metrics = evaluate_zero_shot(
    model, model.tokenizer, model.preprocess, data, args.batch_size, args.num_workers, args.bf16, progress=True
)
print(format_table(metrics))
if args.output:
    record = benchmark_record(args.dataset, model.config.variant, args.model_path, "zeroshot_classification", metrics)
    write_results(args.output, record)
    print(f"wrote {args.output}")
