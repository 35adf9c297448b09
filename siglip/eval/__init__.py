"""Evaluation with the standard protocols: pure metric functions (`metrics.py`); readers for the
datasets as users have them on disk, one module per family (`imagenet.py`, `cifar.py`,
`captions.py` for Flickr30k/COCO, `wds.py` for CLIP_benchmark's webdataset sets, resolved by name in
`datasets.py`); prompts and class names
(`prompts.py`, lists in `siglip/assets/`); batched embedding (`embed.py`); zero-shot classification
(`zero_shot.py`), image-text retrieval (`retrieval.py`) and big_vision's few-shot linear probes
(`fewshot.py`) over a model; the evaluators a training
config lists (`evaluators.py`); and the result files and tables the scripts write (`results.py`).
"""
