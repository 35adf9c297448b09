"""Image-text retrieval of a SigLIP model (SPEC section 7): every image against all its captions.

    python evaluation/retrieval.py --model-path ./checkpoints/siglip_base.pt --dataset flickr30k --data-path /data/flickr30k
    python evaluation/retrieval.py --model-path runs/demo/siglip_demo.pt --dataset digits --data-path data/digits
    -> a progress bar, a small table, and with --output results.json the result in CLIP_benchmark's layout

Metrics: image_retrieval_recall@{1,5,10} (text query, image found), text_retrieval_recall@{1,5,10}
(image query, any of its captions found), and the mean and median rank of each direction.
Datasets: flickr30k (dataset_flickr30k.json, or results_20130124.token with --split all|FILE),
coco (dataset_coco.json, or annotations/captions_<split>.json with --split val2014|val2017),
manifest (a CSV/TSV/JSONL of image,caption rows), digits (the bundled demo's held-out pairs).
"""

import logging

import torch

import siglip
from siglip.eval.datasets import RETRIEVAL_DATASETS, retrieval_set
from siglip.eval.results import benchmark_record, eval_arguments, format_table, write_results
from siglip.eval.retrieval import evaluate_retrieval

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

parser = eval_arguments(
    "Image-text retrieval of a SigLIP model.",
    RETRIEVAL_DATASETS,
    "the dataset folder, or its caption / manifest file",
    "'' = test (Karpathy's split); all; or see the module docstring",
)
args = parser.parse_args()

device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
model = siglip.load(args.model_path, device=device)
data = retrieval_set(args.dataset, args.data_path, args.split)
print(f"{args.dataset}: {len(data.images)} images, {len(data.texts)} captions")
metrics = evaluate_retrieval(
    model, model.tokenizer, model.preprocess, data, args.batch_size, args.num_workers, args.bf16, progress=True
)
print(format_table(metrics))
if args.output:
    record = benchmark_record(args.dataset, model.config.variant, args.model_path, "zeroshot_retrieval", metrics)
    write_results(args.output, record)
    print(f"wrote {args.output}")
