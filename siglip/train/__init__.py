"""The pieces `training/train.py` is assembled from: command-line parsing into a `Config`
(`args.py`), builders for the tokenizer, data, model and optimizer (`build.py`), one optimizer step
with gradient accumulation (`accumulate.py`), the training loop's steps (`loop.py`), the metrics
log with its progress bar (`metrics_log.py`) and its optional TensorBoard / W&B copies
(`loggers.py`). Each is a plain function that tests call directly.
"""
