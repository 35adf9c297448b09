"""Evaluation datasets as users have them on disk: readers for zero-shot classification and retrieval.

Zero-shot (`classification_set`): imagenet (three layouts, detected), cifar10 / cifar100 (the python
pickles), folder (one sub-folder per class), digits (the bundled demo's held-out split).
Retrieval (`retrieval_set`): flickr30k (Karpathy JSON or .token), coco (Karpathy JSON or official
captions JSON), manifest (CSV/TSV/JSONL of image,caption), digits (the held-out pairs).

Readers only list files and labels; images are decoded later, in DataLoader workers. An image that is
listed but missing on disk stays in the list and counts as unreadable (a miss), never as absent.
"""

from __future__ import annotations

import csv
import json
import logging
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import IMAGE_EXTENSIONS, read_manifest
from .prompts import DIGITS_TEMPLATES, FOLDER_TEMPLATES, bundled, read_classnames, read_templates

log = logging.getLogger(__name__)

ZERO_SHOT_DATASETS = ("imagenet", "cifar10", "cifar100", "folder", "digits")
RETRIEVAL_DATASETS = ("flickr30k", "coco", "manifest", "digits")


@dataclass
class ClassificationSet:
    """images: file paths, or (n, H, W, 3) uint8 pixels; labels[i] indexes classnames."""

    images: Sequence[str] | np.ndarray
    labels: list[int]
    classnames: list[str]
    templates: list[str]


@dataclass
class RetrievalSet:
    """Every caption of every image: texts[j] describes images[image_of_text[j]]."""

    images: list[str]
    texts: list[str]
    image_of_text: list[int]


def _first_existing(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.exists()), None)


def _looked_for(candidates: list[Path]) -> str:
    return ", ".join(str(p) for p in candidates)


# --------------------------------------------------------------------------------------------------
# Class folders and ImageNet

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
    import scipy.io  # a scikit-learn dependency, so always installed with siglip

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
        f"{_looked_for(folder_candidates)}; (b) ILSVRC2012_val_*.JPEG in {_looked_for(flat_candidates)} "
        f"{'(found)' if flat else '(none)'} with ILSVRC2012_validation_ground_truth.txt + meta.mat in "
        f"{_looked_for(devkit_candidates)}; (c) {kaggle_csv} + {kaggle_map} + {kaggle_dir}/*.JPEG"
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


# --------------------------------------------------------------------------------------------------
# CIFAR (python pickles)

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
        raise FileNotFoundError(f"{which}: no {meta_file} in {_looked_for(candidates)}")
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


# --------------------------------------------------------------------------------------------------
# Zero-shot sets


def classification_set(
    dataset: str,
    data_path: str | Path,
    split: str = "",
    classnames_file: str = "",
    templates_file: str = "",
) -> ClassificationSet:
    """The images, labels, class names and templates of one zero-shot dataset. `split` "" = the
    dataset's evaluation split (val for ImageNet, test for CIFAR). For `digits`, `data_path` is the
    digits root (written on first use)."""
    data_path = Path(data_path)
    if dataset == "imagenet":
        paths, labels, wnids = read_imagenet(data_path, split or "val")
        classnames = read_classnames(classnames_file) if classnames_file else imagenet_classnames(wnids)
        if len(set(labels)) < 1000:
            log.warning(
                "%s: images of %d of the 1000 ImageNet-1k classes; zero-shot chooses among the %d classes found, "
                "so accuracy is not comparable with ImageNet-1k figures",
                data_path,
                len(set(labels)),
                len(classnames),
            )
        images, templates = paths, bundled("imagenet_templates")
    elif dataset in ("cifar10", "cifar100"):
        images, labels, meta_names = read_cifar(data_path, dataset, split or "test")
        classnames = bundled(f"{dataset}_classnames")
        if [n.replace("_", " ") for n in meta_names] != classnames and not classnames_file:
            log.warning("%s: the meta file's label names differ from CLIP's list; using CLIP's", data_path)
        if classnames_file:
            classnames = read_classnames(classnames_file)
        templates = bundled("cifar_templates")
    elif dataset == "folder":
        images, labels, folders = read_class_folder(data_path / split if split else data_path)
        classnames = read_classnames(classnames_file) if classnames_file else [f.replace("_", " ") for f in folders]
        templates = FOLDER_TEMPLATES
    elif dataset == "digits":
        from .digits import ensure_digits

        # The held-out folders are named by DIGITS_CLASSNAMES; labels index the sorted folder names.
        images, labels, folders = read_class_folder(ensure_digits(data_path) / (split or "heldout"))
        classnames = read_classnames(classnames_file) if classnames_file else folders
        templates = DIGITS_TEMPLATES
    else:
        raise ValueError(f"unknown zero-shot dataset {dataset!r}: choose one of {ZERO_SHOT_DATASETS}")
    if templates_file:
        templates = read_templates(templates_file)
    n_classes = max(labels) + 1
    if len(classnames) < n_classes:
        raise ValueError(
            f"{dataset}: {len(classnames)} class names for {n_classes} classes ({classnames_file or data_path})"
        )
    return ClassificationSet(images, labels, classnames, templates)


# --------------------------------------------------------------------------------------------------
# Retrieval sets


def _group(pairs: list[tuple[str, str]]) -> RetrievalSet:
    """(image, caption) pairs -> images in order of first appearance, each with all its captions."""
    index: dict[str, int] = {}
    texts, image_of_text = [], []
    for image, caption in pairs:
        texts.append(caption)
        image_of_text.append(index.setdefault(image, len(index)))
    return RetrievalSet(list(index), texts, image_of_text)


def _image_folder(candidates: list[Path], first: str, what: str) -> Path:
    """The first candidate folder that holds `first` (the dataset's first image)."""
    d = next((c for c in candidates if (c / first).is_file()), None)
    if d is None:
        raise FileNotFoundError(f"{what}: cannot find the image {first} in {_looked_for(candidates)}")
    return d


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def read_karpathy(path: Path, split: str, image_dirs: list[Path]) -> RetrievalSet:
    """Karpathy's dataset_{flickr30k,coco}.json: images[].{filename, split, sentences[].raw} (COCO adds
    filepath). split: train/val/test (COCO also restval), or all."""
    data = _load_json(path)
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
    d = _image_folder(image_dirs, rel_paths[0], str(path))
    return _group([(str(d / rel), c) for rel, c in pairs])


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
    d = _image_folder(image_dirs, pairs[0][0], str(path))
    return _group([(str(d / name), c) for name, c in pairs])


def read_coco_captions(path: Path, image_dirs: list[Path]) -> RetrievalSet:
    """Official `captions_*.json`: images[].{id, file_name}, annotations[].{image_id, caption}.
    Images without any caption are left out (they cannot be scored as a query)."""
    data = _load_json(path)
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
    d = _image_folder(image_dirs, pairs[0][0], str(path))
    return _group([(str(d / name), c) for name, c in pairs])


def retrieval_set(dataset: str, data_path: str | Path, split: str = "") -> RetrievalSet:
    """All images of a retrieval dataset's split with all their captions. `split` "" = test
    (Karpathy's 1k Flickr30k / 5k COCO test split). For `digits`, `data_path` is the digits root
    (written on first use) and test is its held-out split."""
    root = Path(data_path)
    split = split or "test"
    if dataset == "flickr30k":
        base = root.parent if root.is_file() else root
        image_dirs = [base / "flickr30k-images", base / "flickr30k-images" / "flickr30k-images", base / "images", base]
        candidates = [root] if root.is_file() else [base / "dataset_flickr30k.json", base / "results_20130124.token"]
        ann = _first_existing(candidates)
        if ann is None:
            raise FileNotFoundError(f"flickr30k: no caption file; looked for {_looked_for(candidates)}")
        if ann.suffix == ".json":
            return read_karpathy(ann, split, image_dirs)
        return read_flickr_token(ann, split, image_dirs)
    if dataset == "coco":
        base = root.parent if root.is_file() else root
        image_dirs = [base, base / "images"]
        karpathy = [base / "dataset_coco.json"]
        official = [base / "annotations" / f"captions_{split}.json", base / f"captions_{split}.json"]
        if root.is_file() and root.name.startswith("captions_"):  # an official caption file itself
            split_name = root.stem.removeprefix("captions_")
            return read_coco_captions(
                root, [base.parent / split_name, base / split_name, base.parent / "images" / split_name]
            )
        if root.is_file():
            return read_karpathy(root, split, image_dirs)
        if karpathy[0].is_file() and split in ("train", "restval", "val", "test", "all"):
            return read_karpathy(karpathy[0], split, image_dirs)
        ann = _first_existing(official)
        if ann is not None:
            return read_coco_captions(ann, [base / split, base / "images" / split])
        found = (
            sorted(p.name for p in (base / "annotations").glob("captions_*.json"))
            if (base / "annotations").is_dir()
            else []
        )
        hint = f"; official caption files found: {found}: pass --split {found[0][9:-5]}" if found else ""
        raise FileNotFoundError(
            f"coco: no caption file for split {split!r}; looked for {_looked_for(karpathy + official)}{hint}"
        )
    if dataset == "manifest":
        return _group(read_manifest(root))
    if dataset == "digits":
        from .digits import ensure_digits

        return _group(read_manifest(ensure_digits(root) / f"{'heldout' if split == 'test' else split}.csv"))
    raise ValueError(f"unknown retrieval dataset {dataset!r}: choose one of {RETRIEVAL_DATASETS}")
