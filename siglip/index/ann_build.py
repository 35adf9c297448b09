"""Build the approximate index beside an index's rows (`siglip index`), keep it up to date when
`siglip embed` appends rows, and re-tune its search effort.

Building never holds all rows in memory: the k-means sample is read row by row from the memory-mapped
embeddings-G.npy, then every row is added in chunks. The work is saved to INDEX/ann-partial.faiss +
ann-partial.json after training and every few minutes (and on Ctrl-C); running the same command again
continues from there. The finished index is INDEX/ann-G.faiss, then INDEX/ann.json (written last: the
commit) with the plan, the rows it covers (generation, count, fingerprint), its RAM and the recall
measured against the exact scan (see siglip.index.recall).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from siglip.index import ann, recall
from siglip.index.ann_plan import Plan, choose, fmt_size, parse_size
from siglip.index.clip_import import NO_MODEL
from siglip.index.handle import ANN_FORMAT, ANN_JSON, rows_fingerprint
from siglip.index.store import atomic_write, read_items, read_meta
from siglip.interop.hub import model_ref_exists

log = logging.getLogger(__name__)
CHUNK_ROWS = 1 << 15  # rows added at a time: 32k x 768 x float32 = 96 MiB
CHECKPOINT_SECONDS = 300
PARTIAL = "ann-partial"
TEXT_QUERIES = 100


@dataclass
class BuildOptions:
    kind: str = "auto"
    max_memory: str | int = "4G"
    target_recall: float = 0.95
    nprobe: int | None = None
    queries: int = 200  # held-out rows that measure recall
    texts: bool = True  # also the captions (embedded with the index's model), when the index has them
    progress: bool = True
    model: str = ""  # embeds the captions instead of the index's model (an imported folder names none)


def query_ids(n: int, queries: int) -> np.ndarray:
    """The held-out rows that measure recall (the same for a given n): sorted ids."""
    return np.sort(np.random.default_rng(1).choice(n, min(queries, n), replace=False))


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, (json.dumps(obj, indent=1) + "\n").encode())


def _save_partial(index: Path, fi: Any, state: dict) -> None:
    state = {**state, "rows_done": ann.count(fi), "crc32": ann.write(fi, index / f"{PARTIAL}.faiss")}
    _write_json(index / f"{PARTIAL}.json", state)


def _resume(index: Path, state: dict) -> Any | None:
    """The partial build of this same plan over these same rows, or None."""
    path = index / f"{PARTIAL}.json"
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
        if {k: old.get(k) for k in state} != state:
            log.info("%s: a partial build of another plan or other rows; starting afresh", path)
            return None
        fi = ann.read(index / f"{PARTIAL}.faiss", old.get("crc32"))
    except (ValueError, json.JSONDecodeError) as e:
        log.warning("%s; starting afresh", e)
        return None
    log.info("continuing the interrupted build at row %d", ann.count(fi))
    return fi


def _train(rows: np.ndarray, plan: Plan, exclude: np.ndarray, rng: np.random.Generator) -> Any:
    fi = ann.create(plan, rows.shape[1])
    if ann.needs_training(fi):
        if len(rows) <= 4 * plan.train_rows:  # few rows: sample among those that are not queries
            pool = np.setdiff1d(np.arange(len(rows)), exclude)
            picks = rng.choice(pool, min(plan.train_rows, len(pool)), replace=False)
        else:  # many: sample, then drop the held-out queries (a handful)
            picks = np.setdiff1d(rng.choice(len(rows), plan.train_rows, replace=False), exclude)
        log.info("training %s on %d sampled rows", plan.factory(), len(picks))
        ann.train(fi, np.asarray(rows[np.sort(picks)], dtype=np.float32))  # (t, d): read row by row
    return fi


def _add_rows(index: Path, rows: np.ndarray, fi: Any, state: dict, progress: bool) -> None:
    """Add rows from faiss's count to the end in chunks; a checkpoint every few minutes and on Ctrl-C."""
    n, start = len(rows), ann.count(fi)
    saved = time.monotonic()
    bar = tqdm(total=n, initial=start, unit="row", desc="add rows", disable=not progress)
    try:
        for s in range(start, n, CHUNK_ROWS):
            ann.add(fi, np.asarray(rows[s : s + CHUNK_ROWS], dtype=np.float32))
            bar.update(min(CHUNK_ROWS, n - s))
            if time.monotonic() - saved > CHECKPOINT_SECONDS and s + CHUNK_ROWS < n:
                _save_partial(index, fi, state)
                saved = time.monotonic()
    except KeyboardInterrupt:
        bar.close()
        _save_partial(index, fi, state)
        raise RuntimeError(
            f"interrupted at row {ann.count(fi)} of {n}: the work is saved in {index / PARTIAL}.faiss; "
            "run the same command again to continue"
        ) from None
    bar.close()


def _caption_queries(index: Path, meta: dict, ids: np.ndarray, model: str) -> np.ndarray | None:
    """(t, d) text embeddings of the captions of rows `ids` (up to TEXT_QUERIES), with `model`, else the
    index's. A model of another dimension is an error."""
    items = read_items(index, meta, [int(i) for i in ids[:TEXT_QUERIES]])
    captions = [it["caption"] for it in items if it.get("caption")]
    if not captions or meta.get("kind") != "image":
        return None
    if not model and meta.get("model") == NO_MODEL:
        log.warning("recall for caption queries not measured: rows imported from clip-retrieval; give --model")
        return None
    if not model and not model_ref_exists(meta.get("model", "")):
        log.warning("recall for caption queries not measured: the index's model %r is gone", meta.get("model"))
        return None
    from siglip.api import load

    ref = model or meta["model"]
    m = load(ref, device="cpu")
    if m.dim != meta["dim"]:
        raise ValueError(f"{index}: its rows have dim {meta['dim']}, --model {ref} embeds dim {m.dim}")
    return m.embed_texts(captions).numpy()


def _queries(index: Path, meta: dict, rows: np.ndarray, ids: np.ndarray, opts: BuildOptions) -> dict:
    """{"rows": (q, d), ...} query sets with their self ids (-1 for texts)."""
    sets = {"rows": (np.asarray(rows[ids], dtype=np.float32), ids)}
    captions = _caption_queries(index, meta, ids, opts.model) if opts.texts else None
    if captions is not None:
        sets["captions"] = (captions, np.full(len(captions), -1, dtype=np.int64))
    return sets


def _truths(rows_file: Path, sets: dict, k: int) -> dict:
    return {name: recall.exact_truth(rows_file, recall.as_tensor(q), s, k) for name, (q, s) in sets.items()}


def _tune_and_measure(
    index: Path, meta: dict, rows: np.ndarray, fi: Any, plan: Plan, opts: BuildOptions, sets: dict
) -> tuple:
    """`sets`: `_queries`' output, made before the build (a caption model of the wrong dim fails first)."""
    rows_file = index / meta["embeddings"]
    kmax = min(100, len(rows) - 1)
    log.info("exact top %d of %d queries (the ground truth)", kmax, sum(len(s[1]) for s in sets.values()))
    truths = _truths(rows_file, sets, kmax)
    if opts.nprobe is not None:
        plan = Plan.from_json({**plan.to_json(), "nprobe": opts.nprobe})
    elif plan.kind != "flat":
        q_all = recall.as_tensor(np.concatenate([q for q, _ in sets.values()]))
        s_all = np.concatenate([s for _, s in sets.values()])
        t_all = np.concatenate([t[:, :10] for t in truths.values()])
        plan, r = recall.tune(rows, fi, plan, q_all, s_all, t_all, opts.target_recall)
        log.info(
            "tuned: nprobe %d, %d candidates per result: recall@10 >= %.4f (95%% bound)", plan.nprobe, plan.rerank, r
        )
    report = {
        name: recall.measure(rows, rows_file, fi, plan, recall.as_tensor(q), s, truths[name])
        for name, (q, s) in sets.items()
    }
    return plan, report


def commit(index: Path, meta: dict, rows: np.ndarray, fi: Any, desc: dict) -> dict:
    """Write ann-G.faiss, then ann.json (the commit); delete the files it replaces."""
    name = f"ann-{meta.get('generation', 0)}.faiss"
    crc = ann.write(fi, index / name)
    desc = {
        **desc, "format": ANN_FORMAT, "version": 1, "file": name, "crc32": crc,
        "generation": meta.get("generation"), "uid": meta.get("uid"), "rows": meta["count"],
        "rows_fingerprint": rows_fingerprint(rows, meta),
        "memory_bytes": ann.memory_bytes(fi),
    }  # fmt: skip
    _write_json(index / ANN_JSON, desc)
    for old in index.glob("ann-*.faiss"):
        if old.name != name:
            old.unlink(missing_ok=True)
    (index / f"{PARTIAL}.json").unlink(missing_ok=True)
    return desc


def build(index: str | Path, opts: BuildOptions) -> dict:
    """Build (or continue building) the approximate index of the index at `index`; returns ann.json."""
    index = Path(index)
    meta = read_meta(index)
    if meta is None:
        raise FileNotFoundError(f"{index}: no meta.json; not an index written by siglip embed")
    rows = np.load(index / meta["embeddings"], mmap_mode="r")
    budget = parse_size(opts.max_memory)
    plan = choose(len(rows), rows.shape[1], budget, opts.kind)
    log.info("%d rows x %d: %s (%s), budget %s", len(rows), rows.shape[1], plan.kind, plan.factory(), fmt_size(budget))
    start = time.perf_counter()
    state = {
        "factory": plan.factory(), "generation": meta.get("generation"), "rows": len(rows),
        "rows_fingerprint": rows_fingerprint(rows, meta),
    }  # fmt: skip
    ids = query_ids(len(rows), opts.queries)
    sets = _queries(index, meta, rows, ids, opts)
    fi = _resume(index, state)
    if fi is None:
        fi = _train(rows, plan, ids, np.random.default_rng(0))
        if len(rows) > CHUNK_ROWS:
            _save_partial(index, fi, state)  # training is minutes at scale: keep it
    _add_rows(index, rows, fi, state, opts.progress)
    built = time.perf_counter() - start
    plan, report = _tune_and_measure(index, meta, rows, fi, plan, opts, sets)
    desc = {
        "kind": plan.kind, "plan": plan.to_json(), "max_memory": budget, "build_seconds": round(built, 1),
        "target_recall": opts.target_recall, "recall": report, "measured_at_rows": len(rows),
    }  # fmt: skip
    desc = commit(index, meta, rows, fi, desc)
    (index / f"{PARTIAL}.faiss").unlink(missing_ok=True)
    return desc


def retune(index: str | Path, opts: BuildOptions) -> dict:
    """Tune the search effort of the existing approximate index to `opts.target_recall` (or set
    `opts.nprobe`), measure again, rewrite ann.json."""
    from siglip.index.handle import Index

    idx = Index(index, follow=False)
    loaded = idx.approximate()
    if loaded is None:
        raise ValueError(f"{idx.path}: no usable approximate index to tune; build one with `siglip index {idx.path}`")
    fi, plan, desc = loaded
    sets = _queries(idx.path, idx.meta, idx.rows, query_ids(len(idx.rows), opts.queries), opts)
    plan, report = _tune_and_measure(idx.path, idx.meta, idx.rows, fi, plan, opts, sets)
    desc = {**desc, "plan": plan.to_json(), "target_recall": opts.target_recall, "recall": report}
    desc["measured_at_rows"] = idx.count
    _write_json(idx.path / ANN_JSON, desc)
    return desc
