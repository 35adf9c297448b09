"""Caption files of the retrieval benchmarks: Karpathy's split JSON (Flickr30k, COCO), Flickr30k's
`results_20130124.token`, and COCO's official `captions_*.json`."""

from __future__ import annotations

import logging
from pathlib import Path

from siglip.eval.sets import RetrievalSet, group_pairs, image_folder, load_json

log = logging.getLogger(__name__)


def read_karpathy(path: Path, split: str, image_dirs: list[Path]) -> RetrievalSet:
    """Karpathy's dataset_{flickr30k,coco}.json: images[].{filename, split, sentences[].raw} (COCO adds
    filepath). split: train/val/test (COCO also restval), or all."""
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: expected a Karpathy split file with an 'images' list")
    pairs, rel_paths = [], []
    for i, img in enumerate(data["images"]):
        try:
            if split != "all" and img["split"] != split:
                continue
            rel = str(Path(img.get("filepath", "")) / img["filename"])
            captions = [s["raw"] for s in img["sentences"]]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: images[{i}] lacks {e} (expected filename, split, sentences[].raw)") from None
        if not captions:
            raise ValueError(f"{path}: images[{i}] ({rel}) has no sentences")
        rel_paths.append(rel)
        pairs += [(rel, c) for c in captions]
    if not pairs:
        splits = sorted({str(img.get("split")) for img in data["images"] if isinstance(img, dict)})
        raise ValueError(f"{path}: no images in split {split!r} (splits present: {splits})")
    d = image_folder(image_dirs, rel_paths[0], str(path))
    return group_pairs([(str(d / rel), c) for rel, c in pairs])


def read_flickr_token(path: Path, split: str, image_dirs: list[Path]) -> RetrievalSet:
    """`results_20130124.token`: lines `1000092795.jpg#0<TAB>caption`. The file has no splits: `split`
    is `all`, or a text file listing the image file names to keep (one per line)."""
    keep: set[str] | None = None
    if split != "all":
        if not Path(split).is_file():
            raise ValueError(
                f"{path} has no train/val/test splits: pass --split all, or --split FILE listing the image "
                "names to use, or put Karpathy's dataset_flickr30k.json beside it (the standard 1k test split)"
            )
        keep = set(Path(split).read_text().split())
    pairs = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name, hash_, k = key.rpartition("#")
        if not tab or not hash_ or not k.strip().isdigit():
            raise ValueError(f"{path}:{line_no}: expected 'IMAGE.jpg#N<TAB>caption', got {line[:80]!r}")
        if keep is None or name in keep:
            pairs.append((name, caption.strip()))
    if not pairs:
        raise ValueError(f"{path}: no captions{'' if keep is None else f' for the images listed in {split}'}")
    d = image_folder(image_dirs, pairs[0][0], str(path))
    return group_pairs([(str(d / name), c) for name, c in pairs])


def read_coco_captions(path: Path, image_dirs: list[Path]) -> RetrievalSet:
    """Official `captions_*.json`: images[].{id, file_name}, annotations[].{image_id, caption}.
    Images without any caption are left out (they cannot be scored as a query)."""
    data = load_json(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{path}: expected COCO captions JSON with 'images' and 'annotations'")
    captions: dict[int, list[str]] = {}
    for i, a in enumerate(data["annotations"]):
        try:
            captions.setdefault(a["image_id"], []).append(a["caption"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: annotations[{i}] lacks {e}") from None
    pairs, uncaptioned = [], 0
    for i, img in enumerate(data["images"]):
        try:
            image_id, name = img["id"], img["file_name"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: images[{i}] lacks {e}") from None
        if image_id not in captions:
            uncaptioned += 1
        pairs += [(name, c) for c in captions.get(image_id, [])]
    if uncaptioned:
        log.warning("%s: %d images have no caption and are left out", path, uncaptioned)
    if not pairs:
        raise ValueError(f"{path}: no captioned images")
    d = image_folder(image_dirs, pairs[0][0], str(path))
    return group_pairs([(str(d / name), c) for name, c in pairs])
