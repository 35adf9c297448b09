"""An index folder written the way `siglip embed` writes it, from given rows and items (for tests that
need an index without embedding anything)."""

import json

import numpy as np

from siglip.index.store import FORMAT, VERSION, atomic_npy, write_meta


def make_index(path, rows: np.ndarray, gen: int = 1, items: list[dict] | None = None, kind: str = "image"):
    """An index folder holding `rows` (stored float16) and `items` (default: img{i}.jpg paths)."""
    path.mkdir(parents=True, exist_ok=True)
    atomic_npy(path / f"embeddings-{gen}.npy", rows.astype(np.float16))
    if items is None:
        items = [{"path": f"img{i}.jpg", "id": f"img{i}.jpg"} for i in range(len(rows))]
    lines = [json.dumps(item) + "\n" for item in items]
    (path / f"items-{gen}.jsonl").write_text("".join(lines))
    sizes = [len(s.encode()) for s in lines[:-1]]
    atomic_npy(path / f"items-{gen}.offsets.npy", np.cumsum([0] + sizes).astype(np.int64))
    meta = {
        "format": FORMAT, "version": VERSION, "kind": kind, "model": "/gone.pt", "fingerprint": "f0",
        "dim": rows.shape[1], "dtype": "float16", "count": len(rows), "generation": gen, "skipped": [],
        "embeddings": f"embeddings-{gen}.npy", "items": f"items-{gen}.jsonl", "offsets": f"items-{gen}.offsets.npy",
    }  # fmt: skip
    write_meta(path, meta)
    return path


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
