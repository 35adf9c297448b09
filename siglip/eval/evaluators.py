"""The evaluators a config lists (`Config.evals`), run during and after training.

Each `EvalConfig` names a task and a dataset; this module reads the dataset (siglip.eval.datasets) and
runs the same function as the evaluation scripts (siglip.eval.zero_shot / siglip.eval.retrieval), so the
numbers logged in training are the numbers the scripts print. Results are flat dicts like
{"digits/acc1": 0.93, "digits/image_retrieval_recall@1": 0.12}.

With `outputs_dir` (training passes RUN/eval at the final evaluation), each evaluator also writes
its per-example outputs as `<dataset>_<task>.json` for `python -m siglip.report`:
- zero_shot: {"task", "step", "classnames", "labels": [n], "predictions": [n] (top-1 class, -1 =
  unreadable image)}: enough for the confusion matrix and per-class recall;
- retrieval: {"task", "step", "queries": [{"text", "target": image path, "top": [{"image", "score"}]}]}
  for 8 text queries spread over the set and their 5 best images;
- fewshot (big_vision's linear probes, siglip.eval.fewshot): none; its metrics are
  `<dataset>/fewshot_<k>shot_acc1` (mean over seeds), `..._std` and `..._seed<s>`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from siglip.config import EvalConfig
from siglip.eval.datasets import RETRIEVAL_DATASETS, ZERO_SHOT_DATASETS, classification_set, retrieval_set
from siglip.eval.fewshot import default_splits, evaluate_fewshot
from siglip.eval.retrieval import retrieval_outputs, retrieval_results, retrieval_scores
from siglip.eval.zero_shot import zero_shot_outputs, zero_shot_results, zero_shot_scores
from siglip.model import SigLIP
from siglip.tokenizer import Tokenizer
from siglip.transforms import model_transform


def check_evals(evals: list[EvalConfig]) -> None:
    """Fail before training starts, not at the first evaluation, on a misnamed task or dataset."""
    for i, ev in enumerate(evals):
        allowed = {"zero_shot": ZERO_SHOT_DATASETS, "retrieval": RETRIEVAL_DATASETS, "fewshot": ZERO_SHOT_DATASETS}
        allowed = allowed.get(ev.task)
        if allowed is None:
            raise ValueError(f"evals[{i}].task {ev.task!r}: choose 'zero_shot', 'retrieval' or 'fewshot'")
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
    outputs_dir: str | Path | None = None,
    final_step: int = 0,
    max_num_patches: int = 0,
) -> dict[str, float]:
    """Run every evaluator due at `step` (all of them when step is None: the end of training, at
    `final_step`). With `outputs_dir`, also write each one's per-example outputs there.
    `max_num_patches`: a NaFlex model's patch budget per image (0 = 256)."""
    check_evals(evals)
    results: dict[str, float] = {}
    pre = {"image_size": image_size, "resample": resample, "max_num_patches": max_num_patches}
    transform = model_transform(model.config, pre)
    for ev in evals:
        if step is not None and not (ev.every and step % ev.every == 0):
            continue
        path = ev.path or digits_root
        if ev.task == "fewshot":  # no per-example outputs: the metrics are the record
            results.update(
                {f"{ev.dataset}/{k}": v for k, v in _fewshot(ev, model, transform, path, num_workers, bf16).items()}
            )
            continue
        if ev.task == "zero_shot":
            data = classification_set(ev.dataset, path, ev.split, ev.classnames, ev.templates)
            scores, ok = zero_shot_scores(model, tokenizer, transform, data, ev.batch_size, num_workers, bf16)
            metrics, outputs = zero_shot_results(scores, ok, data), zero_shot_outputs
        else:
            data = retrieval_set(ev.dataset, path, ev.split)
            scores, ok = retrieval_scores(model, tokenizer, transform, data, ev.batch_size, num_workers, bf16)
            metrics, outputs = retrieval_results(scores, ok, data), retrieval_outputs
        results.update({f"{ev.dataset}/{k}": v for k, v in metrics.items()})
        if outputs_dir is not None:
            record = {**outputs(scores, ok, data), "step": step if step is not None else final_step}
            name = f"{ev.dataset}_{ev.task}" + (f"_{Path(ev.split).stem}" if ev.split else "")
            _write_json(Path(outputs_dir) / f"{name}.json", record)
    return results


def _fewshot(ev: EvalConfig, model: SigLIP, transform, path: str, num_workers: int, bf16: bool) -> dict[str, float]:
    """big_vision's few-shot probes (siglip.eval.fewshot), metrics named `fewshot_{k}shot_acc1...`."""
    train_split, test_split = default_splits(ev.dataset)
    train = classification_set(ev.dataset, path, ev.train_split or train_split, ev.classnames, ev.templates)
    test = classification_set(ev.dataset, path, ev.split or test_split, ev.classnames, ev.templates)
    metrics = evaluate_fewshot(
        model, transform, train, test, ev.shots, ev.seeds, ev.l2_reg, ev.batch_size, num_workers, bf16
    )
    return {f"fewshot_{k}": v for k, v in metrics.items()}


def _write_json(path: Path, record: dict) -> None:
    """Atomic write: a report never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)
