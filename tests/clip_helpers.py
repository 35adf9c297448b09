"""clip-retrieval's own writer for the tests: its OutputSink (clip_inference/writer.py), loaded by path
(the package's __init__ imports its Flask back-end, which the test extra leaves out), and a folder
written through it the way `clip-retrieval inference` writes one."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest


def output_sink():
    """clip_retrieval.clip_inference.writer.OutputSink."""
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None:
        pytest.fail("clip-retrieval is not installed: pip install --no-deps clip-retrieval (the test extra's rule)")
    path = Path(spec.submodule_search_locations[0]) / "clip_inference" / "writer.py"
    module_spec = importlib.util.spec_from_file_location("clip_writer_by_path", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.OutputSink


def unit16(x: np.ndarray) -> np.ndarray:
    """Rows as clip-retrieval's mapper stores them: normalised in float32, then float16."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def write_clip_folder(folder: Path, sizes: list[int], dim: int, partitions: int | None = None, seed: int = 0) -> dict:
    """Partitions 0..len(sizes)-1 of a `clip-retrieval inference` run over `partitions` (default: as
    many as sizes) into `folder`, images, texts and metadata enabled, each partition in two batches as
    its runner adds them. Returns {"img": (n, dim) float16, "text": (n, dim) float16, "paths", "captions"}."""
    sink_class = output_sink()
    rng = np.random.default_rng(seed)
    out: dict = {"img": [], "text": [], "paths": [], "captions": []}
    row = 0
    for part, size in enumerate(sizes):
        sink = sink_class(str(folder), True, True, True, part, partitions or len(sizes))
        for batch in np.array_split(np.arange(row, row + size), 2):
            img, text = unit16(rng.standard_normal((len(batch), dim))), unit16(rng.standard_normal((len(batch), dim)))
            paths, captions = [f"/data/img/{i:05d}.jpg" for i in batch], [f"caption {i}" for i in batch]
            metadata = [json.dumps({"url": f"http://x/{i}.jpg", "caption": "dropped", "width": 64}) for i in batch]
            sink.add({"image_embs": img, "text_embs": text, "image_filename": paths, "text": captions,
                      "metadata": metadata})  # fmt: skip
            out["img"].append(img)
            out["text"].append(text)
            out["paths"] += paths
            out["captions"] += captions
        sink.flush()
        row += size
    return {**out, "img": np.concatenate(out["img"]), "text": np.concatenate(out["text"])}
