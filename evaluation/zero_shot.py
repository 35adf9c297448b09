"""Zero-shot classification of a SigLIP model (SPEC section 7): acc1, acc5, mean_per_class_recall.

    python evaluation/zero_shot.py --model-path ./checkpoints/siglip_base.pt --dataset imagenet --data-path /data/imagenet
    python evaluation/zero_shot.py --model-path runs/demo/siglip_demo.pt --dataset digits --data-path data/digits
    python evaluation/zero_shot.py --model-path M --dataset wds --data-path /data/wds_cars
    -> a progress bar, a small table, and with --output results.json the result in CLIP_benchmark's layout

Datasets: imagenet (synset folders, flat val + devkit, or Kaggle's layout: detected), cifar10 and
cifar100 (the python pickles; --split test|train), folder (one sub-folder per class), digits (the
bundled demo's held-out split), wds (a CLIP_benchmark webdataset folder, or a list file of them: one
JSON per set, in --output FOLDER or a name with {dataset}). --templates / --classnames: your own
lists, one entry per line.
"""

import logging

import torch

import siglip
from siglip.eval.datasets import ZERO_SHOT_DATASETS, classification_set
from siglip.eval.results import eval_arguments, format_table, save_set_results
from siglip.eval.wds import sets_to_run
from siglip.eval.zero_shot import evaluate_zero_shot

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

parser = eval_arguments(
    "Zero-shot classification of a SigLIP model.",
    ZERO_SHOT_DATASETS,
    "the dataset folder (for digits: where it is written)",
    "'' = val (imagenet), test (cifar), heldout (digits)",
)
parser.add_argument("--templates", default="", help="file of prompt templates, one per line with {}")
parser.add_argument("--classnames", default="", help="file of class names, one per line in label order")
args = parser.parse_args()

device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
model = siglip.load(args.model_path, device=device)
sets, listed = sets_to_run(args.dataset, args.data_path, "classification")  # a wds list file: one JSON per set
for name, path in sets:
    data = classification_set(args.dataset, path, args.split, args.classnames, args.templates)
    print(f"{name}: {len(data.labels)} images, {len(data.classnames)} classes, {len(data.templates)} templates")
    metrics = evaluate_zero_shot(
        model, model.tokenizer, model.preprocess, data, args.batch_size, args.num_workers, args.bf16, progress=True
    )
    print(format_table(metrics))
    save_set_results(args.output, name, model, args.model_path, "zeroshot_classification", metrics, listed)
