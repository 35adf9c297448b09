"""The evaluators a config lists (`Config.evals`), run during and after training.

Each `EvalConfig` names a task and a dataset; this module reads the dataset (siglip.eval.datasets) and
runs the same function as the evaluation scripts (siglip.eval.zero_shot / siglip.eval.retrieval), so the
numbers logged in training are the numbers the scripts print. Results are flat dicts like
{"digits/acc1": 0.93, "digits/image_retrieval_recall@1": 0.12}.
"""

from __future__ import annotations

from siglip.config import EvalConfig
from siglip.eval.datasets import RETRIEVAL_DATASETS, ZERO_SHOT_DATASETS, classification_set, retrieval_set
from siglip.eval.retrieval import evaluate_retrieval
from siglip.eval.zero_shot import evaluate_zero_shot
from siglip.model import SigLIP
from siglip.tokenizer import Tokenizer
from siglip.transforms import image_transform


def check_evals(evals: list[EvalConfig]) -> None:
    """Fail before training starts, not at the first evaluation, on a misnamed task or dataset."""
    for i, ev in enumerate(evals):
        allowed = {"zero_shot": ZERO_SHOT_DATASETS, "retrieval": RETRIEVAL_DATASETS}.get(ev.task)
        if allowed is None:
            raise ValueError(f"evals[{i}].task {ev.task!r}: choose 'zero_shot' or 'retrieval'")
        if ev.dataset not in allowed:
            raise ValueError(f"evals[{i}]: {ev.task} dataset {ev.dataset!r}: choose one of {allowed}")
        if not ev.path and ev.dataset != "digits":
            raise ValueError(f"evals[{i}] ({ev.dataset}) needs a path")


def run_evals(
    evals: list[EvalConfig],
    model: SigLIP,
    tokenizer: Tokenizer,
    image_size: int,
    resample: str,
    digits_root: str,
    num_workers: int = 2,
    bf16: bool = False,
    step: int | None = None,
) -> dict[str, float]:
    """Run every evaluator due at `step` (all of them when step is None: the end of training)."""
    check_evals(evals)
    results: dict[str, float] = {}
    transform = image_transform(image_size, resample)
    for ev in evals:
        if step is not None and not (ev.every and step % ev.every == 0):
            continue
        path = ev.path or digits_root
        if ev.task == "zero_shot":
            data = classification_set(ev.dataset, path, ev.split, ev.classnames, ev.templates)
            metrics = evaluate_zero_shot(model, tokenizer, transform, data, ev.batch_size, num_workers, bf16)
        else:
            data = retrieval_set(ev.dataset, path, ev.split)
            metrics = evaluate_retrieval(model, tokenizer, transform, data, ev.batch_size, num_workers, bf16)
        results.update({f"{ev.dataset}/{k}": v for k, v in metrics.items()})
    return results
