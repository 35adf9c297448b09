"""Arrow folders written by `datasets.save_to_disk` as pair sources: `--data-path my_dataset/`.

Such a folder holds `data-NNNNN-of-NNNNN.arrow` (Arrow IPC streams), `state.json` (which files, in
order) and `dataset_info.json` (the features); a `DatasetDict` saved the same way has
`dataset_dict.json` and one such folder per split (the `train` split is read). The files are
memory-mapped, so a record batch (a unit, as a row group is for parquet) costs only the pages read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

from siglip.data.parquet import TableError, Unit, pyarrow

log = logging.getLogger(__name__)


def is_arrow_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def _split_folder(root: Path) -> Path:
    """A DatasetDict folder's train split (else its only split); a Dataset folder itself."""
    if not (root / "dataset_dict.json").is_file():
        return root
    try:
        splits = json.loads((root / "dataset_dict.json").read_text())["splits"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise TableError(f"{root / 'dataset_dict.json'}: not a datasets DatasetDict file ({e})") from None
    split = "train" if "train" in splits else splits[0] if len(splits) == 1 else None
    if split is None:
        raise TableError(f"{root}: splits {splits} and none is 'train'; pass --data-path {root}/SPLIT")
    if len(splits) > 1:
        log.info("%s: reading the train split of %s", root, splits)
    return root / split


def arrow_files(folder: str | Path) -> list[str]:
    """The .arrow files of a save_to_disk folder, in the order its state.json lists them."""
    root = _split_folder(Path(folder))
    state_path = root / "state.json"
    try:
        files = [root / f["filename"] for f in json.loads(state_path.read_text())["_data_files"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise TableError(f"{state_path}: not a datasets save_to_disk state file ({e})") from None
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise TableError(f"{root}: state.json lists {missing[0].name}, which is not there")
    if not files:
        raise TableError(f"{root}: state.json lists no data files")
    return [str(f) for f in files]


def _batches(path: str) -> Iterator:
    """The record batches of an Arrow IPC stream (or file), memory-mapped; TableError naming `path`."""
    pa = pyarrow()
    try:
        source = pa.memory_map(path)
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            source.seek(0)
            f = pa.ipc.open_file(source)
            reader = (f.get_batch(i) for i in range(f.num_record_batches))
        yield from reader
    except (pa.ArrowException, OSError) as e:
        raise TableError(f"{path}: not a readable Arrow file ({e})") from None


def arrow_schema(path: str):
    pa = pyarrow()
    try:
        return pa.ipc.open_stream(pa.memory_map(path)).schema
    except pa.ArrowInvalid:
        try:
            return pa.ipc.open_file(pa.memory_map(path)).schema
        except (pa.ArrowException, OSError) as e:
            raise TableError(f"{path}: not a readable Arrow file ({e})") from None


def arrow_units(path: str) -> list[Unit]:
    """One unit per record batch (header reads only: the batches are memory-mapped)."""
    return [Unit(path, i, b.num_rows, "arrow") for i, b in enumerate(_batches(path))]


def read_arrow_rows(unit: Unit, columns: list[str], lo: int = 0, hi: int | None = None) -> Iterator:
    """Rows [lo, hi) of one record batch, as record batches of the given columns."""
    hi = unit.rows if hi is None else hi
    for i, batch in enumerate(_batches(unit.file)):
        if i == unit.index:
            yield batch.select(columns).slice(lo, hi - lo)
            return
    raise TableError(f"{unit.file}: record batch {unit.index} is gone (the file changed while training?)")


def arrow_features(folder: str | Path) -> dict:
    """dataset_info.json's features (e.g. a ClassLabel's names), {} when absent."""
    info = _split_folder(Path(folder)) / "dataset_info.json"
    try:
        return json.loads(info.read_text()).get("features") or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}
