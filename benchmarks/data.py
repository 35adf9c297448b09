"""Training data path: JPEG decode + training transform per image, ours against open_clip's, one run.

    python benchmarks/data.py                         # 640x480 and 1600x1200 JPEGs, 224 px: ~1 min
    python benchmarks/data.py --sizes 500x375 --crop  # ImageNet-sized, with random resized crops

Writes `--count` synthetic photos (smooth colour fields with texture, JPEG quality 90) per size to a
temporary folder, then times, in alternating repeats on one thread (as one DataLoader worker runs):
- ours: `siglip.data.load_image` with the training draft size (`siglip.transforms.draft_size`:
  the JPEG decoded at 1/2-1/8 scale where that still covers the crop) and our training transform;
- ours, full decode (`data.jpeg_draft=false`);
- open_clip: PIL's full decode and open_clip's own training transform for the same size.
Prints medians in images/s and the ratios. open_clip is optional (`pip install open_clip_torch`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from siglip.data import load_image  # noqa: E402
from siglip.transforms import draft_size, image_transform  # noqa: E402


def synthetic_photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Low-frequency colour fields plus fine texture: compresses and decodes like a photo, not like noise."""
    coarse = rng.uniform(0, 255, (height // 32 + 2, width // 32 + 2, 3)).astype(np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    texture = rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + texture, 0, 255).astype(np.uint8))


def write_jpegs(folder: Path, size: tuple[int, int], count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{size[0]}x{size[1]}_{i:04d}.jpg"
        synthetic_photo(*size, rng).save(path, quality=90)
        paths.append(path)
    return paths


def pipelines(image_size: int, crop: bool) -> dict:
    """name -> (decode(path), transform(PIL image))."""
    scale_min = 0.5 if crop else 1.0
    ours_t = image_transform(image_size, random_resized_crop=crop, crop_scale_min=scale_min, horizontal_flip=crop)
    draft = draft_size(image_size, crop, scale_min)
    out = {
        "ours": (lambda p: load_image(p, draft), ours_t),
        "ours_full_decode": (lambda p: load_image(p), ours_t),
    }
    try:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        cfg = PreprocessCfg(
            size=image_size, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic", resize_mode="squash"
        )
        aug = {"scale": (scale_min, 1.0) if crop else (1.0, 1.0)}
        oc_t = image_transform_v2(cfg, is_train=True, aug_cfg=aug)
        out["open_clip"] = (lambda p: Image.open(p).convert("RGB"), oc_t)
    except ImportError:
        print("open_clip is not installed: ours only", file=sys.stderr)
    return out


def time_pipeline(decode, transform, paths: list[Path]) -> float:
    """Images per second over `paths`."""
    t0 = time.perf_counter()
    for p in paths:
        x = transform(decode(p))
    assert x.shape[-1] > 0
    return len(paths) / (time.perf_counter() - t0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python benchmarks/data.py --sizes 640x480 1600x1200 --repeats 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes", nargs="+", default=["640x480", "1600x1200"], help="JPEG sizes, WxH")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--crop", action="store_true", help="random resized crops (scale 0.5-1) and flips, else squash")
    p.add_argument("--count", type=int, default=40, help="images per size")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one DataLoader worker's view
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            w, h = (int(v) for v in size.lower().split("x"))
            paths = write_jpegs(Path(tmp), (w, h), args.count)
            pipes = pipelines(args.image_size, args.crop)
            rates: dict[str, list[float]] = {name: [] for name in pipes}
            for dec, tf in pipes.values():  # warm-up
                time_pipeline(dec, tf, paths[:4])
            for r in range(args.repeats):
                names = list(pipes)[r % len(pipes) :] + list(pipes)[: r % len(pipes)]
                for name in names:
                    rates[name].append(time_pipeline(*pipes[name], paths))
            row = {"jpeg": size, "image_size": args.image_size, "crop": args.crop}
            row.update({name: statistics.median(v) for name, v in rates.items()})
            row["ours/ours_full_decode"] = row["ours"] / row["ours_full_decode"]
            if "open_clip" in row:
                row["ours/open_clip"] = row["ours"] / row["open_clip"]
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for row in rows:
        names = [k for k in ("ours", "ours_full_decode", "open_clip") if k in row]
        rates = "  ".join(f"{k} {row[k]:7.1f}" for k in names)
        ratios = "  ".join(f"{k} {row[k]:.2f}x" for k in row if k.startswith("ours/"))
        print(
            f"{row['jpeg']:>10} -> {row['image_size']} {'crop' if row['crop'] else 'squash'}  img/s: {rates}   {ratios}"
        )


if __name__ == "__main__":
    main()
