"""ImageNet-1k and class-folder datasets as they lie on disk: one sub-folder per class (torchvision's
ImageFolder layout), the official devkit (flat val folder + ground-truth file + meta.mat) and the
Kaggle layout (LOC_val_solution.csv + LOC_synset_mapping.txt). Only paths and labels are read."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np

from siglip.data.manifests import IMAGE_EXTENSIONS
from siglip.eval.prompts import bundled
from siglip.eval.sets import looked_for

log = logging.getLogger(__name__)

WNID = re.compile(r"n\d{8}")


def read_class_folder(root: str | Path) -> tuple[list[str], list[int], list[str]]:
    """A tree with one sub-folder per class: (image paths, labels, class names = sorted folder names)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"class folder dataset not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{root}: no class sub-folders")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for p in sorted((root / name).rglob("*")):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(str(p))
                labels.append(label)
    if not paths:
        raise FileNotFoundError(f"{root}: no images in the class folders {classes[:5]}...")
    empty = sorted(set(classes) - {classes[i] for i in set(labels)})
    if empty:  # still a class to choose among, with no image to score
        log.warning(
            "%s: %d class folders have no images (e.g. %s); they stay among the choices", root, len(empty), empty[0]
        )
    return paths, labels, classes


def _synset_folder(d: Path) -> bool:
    return d.is_dir() and any(WNID.fullmatch(p.name) and p.is_dir() for p in d.iterdir())


def _imagenet_val_number(name: str, where: Path) -> int:
    m = re.fullmatch(r"ILSVRC2012_val_(\d{8})\.JPEG", name, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"{where}: unexpected file name {name!r} (expected ILSVRC2012_val_NNNNNNNN.JPEG)")
    return int(m.group(1))


def read_devkit_synsets(meta_mat: Path) -> dict[int, str]:
    """ILSVRC2012_ID (1..1000) -> WNID for the 1000 leaf synsets of the devkit's data/meta.mat."""
    try:
        import scipy.io  # the devkit's meta.mat is a MATLAB file
    except ImportError:
        raise ImportError(
            f"{meta_mat}: reading the ImageNet devkit needs scipy: pip install 'siglip[imagenet]'"
        ) from None
    try:
        synsets = scipy.io.loadmat(str(meta_mat), squeeze_me=True)["synsets"]
    except Exception as e:
        raise ValueError(f"{meta_mat}: cannot read the devkit synsets ({type(e).__name__}: {e})") from e
    ids = {}
    for s in np.atleast_1d(synsets):
        i, wnid = int(s["ILSVRC2012_ID"]), str(s["WNID"])
        if 1 <= i <= 1000:  # ids above 1000 are the non-leaf synsets of the hierarchy
            ids[i] = wnid
    if not ids:
        raise ValueError(f"{meta_mat}: no synsets with ILSVRC2012_ID in 1..1000")
    return ids


def read_imagenet(root: str | Path, split: str = "val") -> tuple[list[str], list[int], list[str]]:
    """(image paths, labels, WNIDs in label order) from any of the three on-disk layouts:

    (a) `<split>/n01440764/*.JPEG` (or the synset folders directly under root): label = position
        of the folder in the sorted list of synset folders;
    (b) flat `ILSVRC2012_val_*.JPEG` + devkit `data/ILSVRC2012_validation_ground_truth.txt` (ids in the
        devkit's own order) + `data/meta.mat` (id -> WNID): label = position of the WNID in the sorted
        list of the 1000 leaf synsets;
    (c) Kaggle: `ILSVRC/Data/CLS-LOC/val/*.JPEG` + `LOC_val_solution.csv` (label = first token of
        PredictionString) + `LOC_synset_mapping.txt`: label = line of the WNID in the mapping.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet folder not found: {root}")
    # (a) synset folders
    folder_candidates = [root / split, root / "ILSVRC" / "Data" / "CLS-LOC" / split, root]
    for d in folder_candidates:
        if _synset_folder(d):
            paths, labels, wnids = read_class_folder(d)
            bad = [w for w in wnids if not WNID.fullmatch(w)]
            if bad:
                raise ValueError(f"{d}: folders that are not WordNet ids beside the synset folders: {bad[:5]}")
            return paths, labels, wnids
    # (c) Kaggle
    kaggle_csv = root / f"LOC_{split}_solution.csv"
    kaggle_map = root / "LOC_synset_mapping.txt"
    kaggle_dir = root / "ILSVRC" / "Data" / "CLS-LOC" / split
    if kaggle_csv.is_file() and kaggle_map.is_file():
        return _read_imagenet_kaggle(kaggle_csv, kaggle_map, kaggle_dir)
    # (b) flat files + devkit
    flat_candidates = [root / split, root]
    devkit_candidates = [root / "ILSVRC2012_devkit_t12" / "data", root / "devkit" / "data", root / "data"]
    devkit_candidates += [root.parent / "ILSVRC2012_devkit_t12" / "data"]
    flat = next((d for d in flat_candidates if d.is_dir() and any(d.glob("ILSVRC2012_val_*"))), None)
    devkit = next((d for d in devkit_candidates if (d / "ILSVRC2012_validation_ground_truth.txt").is_file()), None)
    if flat is not None and devkit is not None:
        return _read_imagenet_devkit(flat, devkit / "ILSVRC2012_validation_ground_truth.txt", devkit / "meta.mat")
    raise FileNotFoundError(
        f"{root}: no ImageNet layout found. Looked for (a) synset folders n########/ in "
        f"{looked_for(folder_candidates)}; (b) ILSVRC2012_val_*.JPEG in {looked_for(flat_candidates)} "
        f"{'(found)' if flat else '(none)'} with ILSVRC2012_validation_ground_truth.txt + meta.mat in "
        f"{looked_for(devkit_candidates)}; (c) {kaggle_csv} + {kaggle_map} + {kaggle_dir}/*.JPEG"
    )


def _read_imagenet_devkit(images: Path, truth: Path, meta: Path) -> tuple[list[str], list[int], list[str]]:
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} not found: the devkit ids in {truth} need it to map to synsets")
    id_to_wnid = read_devkit_synsets(meta)
    wnids = sorted(id_to_wnid.values())
    label_of = {w: i for i, w in enumerate(wnids)}
    truth_ids = []
    for line_no, line in enumerate(truth.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            truth_ids.append(int(line))
        except ValueError:
            raise ValueError(f"{truth}:{line_no}: expected an integer id, got {line!r}") from None
    paths, labels = [], []
    for p in sorted(images.glob("ILSVRC2012_val_*")):
        n = _imagenet_val_number(p.name, images)  # line n of the ground truth (1-based)
        if n > len(truth_ids):
            raise ValueError(f"{p}: image number {n}, but {truth} has only {len(truth_ids)} labels")
        devkit_id = truth_ids[n - 1]
        if devkit_id not in id_to_wnid:
            raise ValueError(f"{truth}:{n}: id {devkit_id} is not a leaf synset in {meta}")
        paths.append(str(p))
        labels.append(label_of[id_to_wnid[devkit_id]])
    if len(paths) != len(truth_ids):
        log.warning(
            "%s: %d labels, %d images in %s: evaluating the images present", truth, len(truth_ids), len(paths), images
        )
    return paths, labels, wnids


def _read_imagenet_kaggle(solution: Path, mapping: Path, images: Path) -> tuple[list[str], list[int], list[str]]:
    wnids = []
    for line_no, line in enumerate(mapping.read_text().splitlines(), 1):
        if line.strip():
            wnid = line.split()[0]
            if not WNID.fullmatch(wnid):
                raise ValueError(f"{mapping}:{line_no}: expected 'n######## names', got {line!r}")
            wnids.append(wnid)
    wnids = sorted(wnids)  # the file is already sorted; sorting makes the label rule explicit
    label_of = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    with open(solution, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise ValueError(f"{solution}:1: expected the header 'ImageId,PredictionString', got {header}")
        for row in reader:
            if not row:
                continue
            line_no = reader.line_num
            if len(row) < 2 or not row[1].split():
                raise ValueError(f"{solution}:{line_no}: expected 'ImageId,PredictionString', got {row}")
            wnid = row[1].split()[0]  # "n01751748 x0 y0 x1 y1 n01751748 ...": the first token is the class
            if wnid not in label_of:
                raise ValueError(f"{solution}:{line_no}: synset {wnid} is not in {mapping}")
            paths.append(str(images / f"{row[0]}.JPEG"))
            labels.append(label_of[wnid])
    if not paths:
        raise ValueError(f"{solution}: no rows")
    # Sorted by file name, like the other layouts, so results do not depend on the CSV's order.
    order = sorted(range(len(paths)), key=paths.__getitem__)
    return [paths[i] for i in order], [labels[i] for i in order], wnids


def imagenet_classnames(wnids: list[str]) -> list[str]:
    """CLIP's class names for ImageNet-1k WNIDs (any subset of the 1000)."""
    name_of = dict(zip(bundled("imagenet_synsets"), bundled("imagenet_classnames")))
    unknown = [w for w in wnids if w not in name_of]
    if unknown:
        raise ValueError(f"synsets not in ImageNet-1k: {unknown[:5]}; pass --classnames FILE (one name per line)")
    return [name_of[w] for w in wnids]
