"""Evaluation datasets as users have them on disk: readers for zero-shot classification and retrieval.

Zero-shot (`classification_set`): imagenet (three layouts, detected), cifar10 / cifar100 (the python
pickles), folder (one sub-folder per class), digits (the bundled demo's held-out split; train: its
training images with their labels), wds (CLIP_benchmark's webdataset copies, siglip.eval.wds),
parquet (a label column; parquet files or a datasets.save_to_disk folder).
Retrieval (`retrieval_set`): flickr30k (Karpathy JSON or .token), coco (Karpathy JSON or official
captions JSON), manifest (CSV/TSV/JSONL of image,caption), digits (the held-out pairs), wds, parquet
(an image and a caption or list-of-captions column).

Readers only list files and labels; images are decoded later, in DataLoader workers. An image that is
listed but missing on disk stays in the list and counts as unreadable (a miss), never as absent.
"""

from __future__ import annotations

import logging
from pathlib import Path

from siglip.data.manifests import read_manifest
from siglip.eval.captions import read_coco_captions, read_flickr_token, read_karpathy
from siglip.eval.cifar import read_cifar
from siglip.eval.imagenet import imagenet_classnames, read_class_folder, read_imagenet
from siglip.eval.prompts import DIGITS_TEMPLATES, FOLDER_TEMPLATES, bundled, read_classnames, read_templates
from siglip.eval.sets import (
    RETRIEVAL_DATASETS,
    ZERO_SHOT_DATASETS,
    ClassificationSet,
    RetrievalSet,
    first_existing,
    group_pairs,
    looked_for,
)
from siglip.eval.tables import read_table_captions, read_table_classes
from siglip.eval.wds import read_wds_classification, read_wds_retrieval

log = logging.getLogger(__name__)

__all__ = [
    "RETRIEVAL_DATASETS",
    "ZERO_SHOT_DATASETS",
    "ClassificationSet",
    "RetrievalSet",
    "classification_set",
    "retrieval_set",
]


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
        images, labels, folders = _digits(data_path, split)
        classnames = read_classnames(classnames_file) if classnames_file else folders
        templates = DIGITS_TEMPLATES
    elif dataset == "wds":
        images, labels, classnames, templates = read_wds_classification(data_path, split or "test")
        if not templates and not templates_file:  # few-shot probes need none; zero-shot refuses to run
            log.warning("%s: no zeroshot_classification_templates.txt (zero-shot needs --templates FILE)", data_path)
        classnames = read_classnames(classnames_file) if classnames_file else classnames
    elif dataset == "parquet":
        images, labels, classnames = read_table_classes(str(data_path / split if split else data_path))
        classnames = read_classnames(classnames_file) if classnames_file else classnames
        if not classnames:
            raise ValueError(f"{data_path}: the label column records no class names: pass --classnames FILE")
        templates = FOLDER_TEMPLATES
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


def _digits(data_path: Path, split: str) -> tuple[list[str], list[int], list[str]]:
    """(images, labels, class names) of the demo digits: the held-out folders are named by
    DIGITS_CLASSNAMES and labels index the sorted folder names; `train` (few-shot probes) is the
    training images, labelled the same way."""
    from siglip.data.digits import DIGITS_CLASSNAMES, ensure_digits, train_labels

    if split != "train":
        return read_class_folder(ensure_digits(data_path) / (split or "heldout"))
    images, digits = train_labels(data_path)
    folders = sorted(DIGITS_CLASSNAMES)
    return images, [folders.index(DIGITS_CLASSNAMES[d]) for d in digits], folders


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
        ann = first_existing(candidates)
        if ann is None:
            raise FileNotFoundError(f"flickr30k: no caption file; looked for {looked_for(candidates)}")
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
        ann = first_existing(official)
        if ann is not None:
            return read_coco_captions(ann, [base / split, base / "images" / split])
        found = (
            sorted(p.name for p in (base / "annotations").glob("captions_*.json"))
            if (base / "annotations").is_dir()
            else []
        )
        hint = f"; official caption files found: {found}: pass --split {found[0][9:-5]}" if found else ""
        raise FileNotFoundError(
            f"coco: no caption file for split {split!r}; looked for {looked_for(karpathy + official)}{hint}"
        )
    if dataset == "manifest":
        return group_pairs(read_manifest(root))
    if dataset == "parquet":
        return read_table_captions(str(root))
    if dataset == "digits":
        from siglip.data.digits import ensure_digits

        return group_pairs(read_manifest(ensure_digits(root) / f"{'heldout' if split == 'test' else split}.csv"))
    if dataset == "wds":
        return read_wds_retrieval(root, split)
    raise ValueError(f"unknown retrieval dataset {dataset!r}: choose one of {RETRIEVAL_DATASETS}")
