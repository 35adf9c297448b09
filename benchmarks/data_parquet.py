"""Training loader img/s: the same pairs from parquet (images inside) against a CSV + image files.

    python benchmarks/data_parquet.py                      # 512 JPEGs of 640x480, 2 workers: ~1-2 min
    python benchmarks/data_parquet.py --count 2000 --workers 4 --size 500x375

Writes `--count` synthetic photos (colour fields with texture, JPEG quality 90) once as files with a
pairs.csv, once as pairs.parquet in the `datasets` layout (Image struct with the bytes inside, row
groups of 100 rows), then times whole epochs through the two training loaders as training/train.py
builds them (the draft decode and training transform at 224 px, the tokenizer, batch 64), in
alternating repeats: `siglip.data.epoch_loader` over `PairDataset` (one file open per image) and
`siglip.data.table_stream.table_loader` (row groups streamed). Both read from the page cache after
the first repeat (a cold disk favours parquet more: one sequential read against one open per image).
Then the CPU seconds per epoch of each in this process (no workers): on a loaded machine the fairer
figure, since wall time depends on what else runs. Prints medians, the ratios, and the load average.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from siglip.config import ModelConfig  # noqa: E402
from siglip.data import PairDataset, epoch_loader, read_manifest  # noqa: E402
from siglip.data.parquet import pyarrow  # noqa: E402
from siglip.data.table_stream import TableStream, table_loader  # noqa: E402
from siglip.data.tables import find_tables  # noqa: E402
from siglip.tokenizer import Tokenizer  # noqa: E402
from siglip.transforms import draft_size, model_transform  # noqa: E402


def photo(width: int, height: int, rng: np.random.Generator) -> bytes:
    """A JPEG that compresses and decodes like a photo: smooth colour plus fine noise."""
    coarse = Image.fromarray(rng.uniform(0, 255, (height // 32 + 2, width // 32 + 2, 3)).astype(np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.float32)
    pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_data(root: Path, count: int, width: int, height: int) -> list[str]:
    pa, rng = pyarrow(), np.random.default_rng(0)
    captions = [f"a photo of thing {i % 97} in colour {i % 13}" for i in range(count)]
    jpegs = [photo(width, height, rng) for _ in range(count)]
    (root / "img").mkdir()
    for i, data in enumerate(jpegs):
        (root / "img" / f"{i:06d}.jpg").write_bytes(data)
    (root / "pairs.csv").write_text(
        "image,caption\n" + "".join(f"img/{i:06d}.jpg,{c}\n" for i, c in enumerate(captions))
    )
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": b, "path": f"{i:06d}.jpg"} for i, b in enumerate(jpegs)], image_type)
    pa.parquet.write_table(pa.table({"image": images, "caption": captions}), root / "pairs.parquet", row_group_size=100)
    return captions


def epoch_cpu(batches) -> float:
    t = time.process_time()
    for _ in batches:
        pass
    return time.process_time() - t


def epoch_rate(batches) -> float:
    t, n = time.perf_counter(), 0
    for b in batches:
        n += b["pixels"].shape[0] + b["skipped"]
    return n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=512)
    p.add_argument("--size", default="640x480")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    width, height = map(int, args.size.split("x"))
    model = ModelConfig.from_variant("B/16", image_size=224)
    transform = model_transform(model, {"image_size": 224, "resample": "bicubic", "max_num_patches": 0})
    draft = draft_size(224, False, 0.5)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        captions = write_data(root, args.count, width, height)
        tok = Tokenizer.train(captions, 200, 16, "unigram")
        csv = PairDataset(read_manifest(root / "pairs.csv"), transform, draft=draft)
        pq = TableStream(find_tables(str(root / "pairs.parquet")), transform, tok, 64, shuffle_buffer=200, draft=draft)
        rates: dict[str, list[float]] = {"csv + files": [], "parquet": []}
        for r in range(args.repeats + 1):  # the first round warms the page cache and is not counted
            a = epoch_rate(epoch_loader(csv, tok, 64, r, 0, args.workers))
            b = epoch_rate(table_loader(pq, r, 0, args.workers))
            if r:
                rates["csv + files"].append(a)
                rates["parquet"].append(b)
        cpu: dict[str, list[float]] = {"csv + files": [], "parquet": []}
        for r in range(args.repeats):
            cpu["csv + files"].append(epoch_cpu(epoch_loader(csv, tok, 64, r, 0, 0)))
            cpu["parquet"].append(epoch_cpu(table_loader(pq, r, 0, 0)))
    load = os.getloadavg()
    print(f"{args.count} JPEGs {args.size} -> 224 px, batch 64, {args.workers} workers, {args.repeats} epochs each")
    for name, xs in rates.items():
        print(f"{name:12s} {statistics.median(xs):8.1f} images/s (median; {', '.join(f'{x:.1f}' for x in xs)})")
    ratio = statistics.median(rates["parquet"]) / statistics.median(rates["csv + files"])
    print(f"parquet / csv: {ratio:.2f}x images/s")
    for name, xs in cpu.items():
        print(f"{name:12s} {statistics.median(xs) / args.count * 1e3:8.2f} CPU ms per image, no workers (median)")
    cpu_ratio = statistics.median(cpu["csv + files"]) / statistics.median(cpu["parquet"])
    print(f"csv / parquet CPU time: {cpu_ratio:.2f}x   (load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})")


if __name__ == "__main__":
    main()
