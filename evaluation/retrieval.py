"""Image-text retrieval of a SigLIP model (SPEC section 7): every image against all its captions.

    python evaluation/retrieval.py --model-path ./checkpoints/siglip_base.pt --dataset flickr30k --data-path /data/flickr30k
    python evaluation/retrieval.py --model-path runs/demo/siglip_demo.pt --dataset digits --data-path data/digits
    python evaluation/retrieval.py --model-path M --dataset wds --data-path /data/wds_flickr30k
    -> a progress bar, a small table, and with --output results.json the result in CLIP_benchmark's layout

Metrics: image_retrieval_recall@{1,5,10} (text query, image found), text_retrieval_recall@{1,5,10}
(image query, any of its captions found), and the mean and median rank of each direction.
Datasets: flickr30k (dataset_flickr30k.json, or results_20130124.token with --split all|FILE),
coco (dataset_coco.json, or annotations/captions_<split>.json with --split val2014|val2017),
manifest (a CSV/TSV/JSONL of image,caption rows), digits (the bundled demo's held-out pairs), wds (a
CLIP_benchmark webdataset folder with dataset_type.txt "retrieval", every .txt line a caption; or a
list file of folders: one JSON per set, in --output FOLDER or a name with {dataset}).
"""

import logging

import torch

import siglip
from siglip.eval.datasets import RETRIEVAL_DATASETS, retrieval_set
from siglip.eval.results import eval_arguments, format_table, save_set_results
from siglip.eval.retrieval import evaluate_retrieval
from siglip.eval.wds import sets_to_run

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
sets, listed = sets_to_run(args.dataset, args.data_path, "retrieval")  # a wds list file: one JSON per set
for name, path in sets:
    data = retrieval_set(args.dataset, path, args.split)
    print(f"{name}: {len(data.images)} images, {len(data.texts)} captions")
    metrics = evaluate_retrieval(
        model, model.tokenizer, model.preprocess, data, args.batch_size, args.num_workers, args.bf16, progress=True
    )
    print(format_table(metrics))
    save_set_results(args.output, name, model, args.model_path, "zeroshot_retrieval", metrics, listed)
