"""Evaluation sets from parquet files or `datasets.save_to_disk` folders (dataset name `parquet`).

Retrieval: every row's image with its caption, or all its captions when the column holds a list
(COCO-style). Zero-shot: a label column (label, labels, class, fine_label, target) of integers,
named by the `datasets` ClassLabel feature (or --classnames), or of strings (the sorted distinct
values are the classes). Rows without a caption or a label are left out and counted in the log;
images are read by row group when embedded (`siglip.data.tables.TableRow`).
"""

from __future__ import annotations

import logging

from siglip.data.tables import TableError, TableRow, find_tables, label_names, read_rows
from siglip.eval.sets import RetrievalSet

log = logging.getLogger(__name__)


def _tables(path: str, **kw):
    tables = find_tables(str(path), **kw)
    if tables is None:
        raise FileNotFoundError(f"{path}: not a parquet file, folder or glob, nor a datasets.save_to_disk folder")
    return tables


def read_table_captions(path: str, caption_column: str = "") -> RetrievalSet:
    """Each row's image with all its non-empty captions."""
    tables = _tables(path, caption_column=caption_column)
    images, texts, image_of_text, empty = [], [], [], 0
    for u in range(len(tables.units)):
        rows = [v for b in read_rows(tables, u, columns=[tables.caption_column]) for v in b.column(0).to_pylist()]
        for r, value in enumerate(rows):
            captions = [c.strip() for c in (value if isinstance(value, list) else [value]) if isinstance(c, str)]
            captions = [c for c in captions if c]
            if not captions:
                empty += 1
                continue
            texts += captions
            image_of_text += [len(images)] * len(captions)
            images.append(TableRow(tables, u, r))
    if empty:
        log.warning("%s: %d rows without a caption left out", path, empty)
    return RetrievalSet(images, texts, image_of_text)


def read_table_classes(path: str) -> tuple[list[TableRow], list[int], list[str]]:
    """(images, labels, class names from the ClassLabel feature or [] when not recorded)."""
    tables = _tables(path, caption_required=False, label=True)
    if not tables.label_column:
        raise TableError(f"{path}: no label column (looked for label, labels, class, fine_label, target)")
    values, images = [], []
    for u in range(len(tables.units)):
        rows = [v for b in read_rows(tables, u, columns=[tables.label_column]) for v in b.column(0).to_pylist()]
        for r, value in enumerate(rows):
            if isinstance(value, (int, str)) and not isinstance(value, bool) and value != -1:  # -1: ClassLabel's none
                values.append(value)
                images.append(TableRow(tables, u, r))
    if len(values) < sum(u.rows for u in tables.units):
        log.warning("%s: %d rows without a label left out", path, sum(u.rows for u in tables.units) - len(values))
    if values and isinstance(values[0], str):
        names = sorted({str(v) for v in values})
        return images, [names.index(str(v)) for v in values], names
    return images, [int(v) for v in values], label_names(tables)
