"""CIFAR-10 / CIFAR-100 in their python release (pickled batches), read without running code."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from siglip.eval.sets import looked_for

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes (protocol <= 2) as _codecs.encode(text, "latin1"); allow only that codec.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with codec {encoding!r}")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR's python release is a pickle, and unpickling can call any importable function (a file
    naming os.system would run a command). This unpickler resolves only the few names that a dict of
    lists and numpy uint8 arrays needs, so a tampered file fails instead of running code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[module, name]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch")


def read_cifar_pickle(path: Path) -> dict[str, object]:
    """One CIFAR batch/meta file as a dict with str keys (the files have bytes keys under
    encoding="bytes"; a re-saved Python 3 copy may have str keys)."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file not found: {path}")
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as e:
        raise ValueError(f"{path}: not a CIFAR python pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


CIFAR = {  # folder, files per split, label key, meta file, meta key
    "cifar10": ("cifar-10-batches-py", {"test": ["test_batch"], "train": [f"data_batch_{i}" for i in range(1, 6)]}, "labels", "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", {"test": ["test"], "train": ["train"]}, "fine_labels", "meta", "fine_label_names"),
}  # fmt: skip


def read_cifar(root: str | Path, which: str, split: str = "test") -> tuple[np.ndarray, list[int], list[str]]:
    """(pixels (n, 32, 32, 3) uint8, labels, label names from the meta file) for cifar10/cifar100.
    `root` is the extracted folder (cifar-10-batches-py / cifar-100-python) or its parent."""
    folder, files, label_key, meta_file, meta_key = CIFAR[which]
    root = Path(root)
    candidates = [root / folder, root]
    d = next((c for c in candidates if (c / meta_file).is_file()), None)
    if d is None:
        raise FileNotFoundError(f"{which}: no {meta_file} in {looked_for(candidates)}")
    if split not in files:
        raise ValueError(f"{which}: unknown split {split!r}: choose one of {list(files)}")
    names = read_cifar_pickle(d / meta_file).get(meta_key)
    if not isinstance(names, list):
        raise ValueError(f"{d / meta_file}: no {meta_key!r} list")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    pixels, labels = [], []
    for name in files[split]:
        batch = read_cifar_pickle(d / name)
        data, y = batch.get("data"), batch.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{d / name}: 'data' must be a uint8 array (n, 3072), got {getattr(data, 'shape', data)}")
        if not isinstance(y, list) or len(y) != len(data):
            raise ValueError(f"{d / name}: {label_key!r} must be a list of {len(data)} ints")
        if y and not (0 <= min(y) and max(y) < len(names)):
            raise ValueError(f"{d / name}: labels outside 0..{len(names) - 1}")
        # each row: 1024 R, then 1024 G, then 1024 B, each a row-major 32x32 plane
        pixels.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels += [int(v) for v in y]
    return np.ascontiguousarray(np.concatenate(pixels)), labels, names
