"""Evaluation with the standard protocols: pure metric functions (`metrics.py`); readers for the
datasets as users have them on disk, one module per family (`imagenet.py`, `cifar.py`,
`captions.py` for Flickr30k/COCO, resolved by name in `datasets.py`); prompts and class names
(`prompts.py`, lists in `siglip/assets/`); batched embedding (`embed.py`); zero-shot classification
(`zero_shot.py`) and image-text retrieval (`retrieval.py`) over a model; the evaluators a training
config lists (`evaluators.py`); and the result files and tables the scripts write (`results.py`).
"""
