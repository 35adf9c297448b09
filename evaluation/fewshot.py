"""Few-shot linear probes of a SigLIP model, as big_vision's fewshot_lsr evaluator computes them.

    python evaluation/fewshot.py --model-path ./checkpoints/siglip_base.pt --dataset cifar100 --data-path /data/cifar
    python evaluation/fewshot.py --model-path runs/demo/siglip_demo.pt --dataset digits --data-path data/digits --shots 10
    -> per shot count: top-1 on the test split, mean and spread over the seeds; --output FILE: the JSON

Image features: the MAP head's output (big_vision's pre_logits), computed once per split; for each
shot count k and seed s, k training images per class are drawn (seeded, nested over k), a
regularised least-squares probe is solved in closed form (--l2-reg, 2^10 by default) and scored on
the test split. Datasets: every classification set the zero-shot script reads (imagenet, cifar10,
cifar100, folder, digits, wds); --train-split and --split name the two splits (defaults: train and
the dataset's evaluation split; for folder: DIR/train and DIR/test). Details: docs/evaluate.md.
"""

import argparse
import logging

import torch

import siglip
from siglip.eval.datasets import ZERO_SHOT_DATASETS, classification_set
from siglip.eval.fewshot import L2_REG, default_splits, evaluate_fewshot
from siglip.eval.results import benchmark_record, eval_arguments, write_results

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

parser = eval_arguments(
    "Few-shot linear probes (big_vision's fewshot_lsr) of a SigLIP model.",
    ZERO_SHOT_DATASETS,
    "the dataset folder (for digits: where it is written)",
    "the test split: '' = val (imagenet), test (cifar, wds, folder), heldout (digits)",
)
parser.description, parser.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter  # --help shows the examples
parser.add_argument("--train-split", default="", help="the split shots are drawn from ('' = train)")
parser.add_argument("--shots", default="1,5,10,25", help="shot counts per class, comma-separated")
parser.add_argument("--seeds", type=int, default=3, help="draws per shot count (seeds 0..N-1)")
parser.add_argument("--l2-reg", type=float, default=L2_REG, help="the ridge penalty (big_vision: 2^10)")
parser.add_argument("--classnames", default="", help="file of class names, one per line in label order")
args = parser.parse_args()
shots = [int(k) for k in args.shots.split(",")]
if min(shots) < 1 or args.seeds < 1:
    parser.error("--shots must be positive integers and --seeds at least 1")

device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
model = siglip.load(args.model_path, device=device)
train_split, test_split = default_splits(args.dataset)
train = classification_set(args.dataset, args.data_path, args.train_split or train_split, args.classnames)
test = classification_set(args.dataset, args.data_path, args.split or test_split, args.classnames)
print(f"{args.dataset}: {len(train.labels)} train and {len(test.labels)} test images, {len(test.classnames)} classes")
metrics = evaluate_fewshot(
    model, model.preprocess, train, test, shots, args.seeds, args.l2_reg, args.batch_size, args.num_workers,
    args.bf16, progress=True,
)  # fmt: skip
for k in shots:
    seeds = ", ".join(f"{100 * metrics[f'{k}shot_acc1_seed{s}']:.2f}" for s in range(args.seeds))
    mean, std = 100 * metrics[f"{k}shot_acc1"], 100 * metrics[f"{k}shot_acc1_std"]
    print(f"{k:>3}-shot top-1  {mean:6.2f} % +- {std:.2f}  (seeds: {seeds})")
if metrics["unreadable_images"]:
    print(f"unreadable test images (each a miss): {metrics['unreadable_images']}")
if args.output:
    record = benchmark_record(args.dataset, model.config.variant, args.model_path, "fewshot_linear_probe", metrics)
    write_results(args.output, {**record, "shots": shots, "seeds": args.seeds, "l2_reg": args.l2_reg})
    print(f"wrote {args.output}")
