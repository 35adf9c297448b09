"""CLIP_benchmark's webdataset copies of evaluation sets (`clip-benchmark/wds_<name>`), read as they are.

A folder (what `clip_benchmark_export_wds` writes and the Hugging Face copies hold):
    test/0.tar, 1.tar, ...   the shards, with test/nshards.txt (CLIP_benchmark reads {0..n-1}.tar;
                             without it, every *.tar of the split in numeric order); train/ likewise
    classnames.txt           one class name a line, in label order (classification)
    zeroshot_classification_templates.txt   one template a line, `{c}` for the class name
    dataset_type.txt         "retrieval" for caption sets; absent or "classification" otherwise
A sample is an image (the first of webp, png, jpg, jpeg that it has) with `.cls` (an integer label)
or `.txt` (its captions). Read as clip_benchmark 1.6 reads them (`build_wds_dataset`): class names
and templates are the lines of their file, stripped, none dropped; the captions are the
`str.splitlines()` of the UTF-8 `.txt` (every line a caption); the label is `int(.cls)`.

The shards are never unpacked: one pass over each tar's headers notes where every image's bytes are
(`TarImage`: shard, offset, size) and reads the small .cls/.txt members; DataLoader workers read
and decode the images by offset (an unreadable one is a miss, as with every reader). A sample with
no image, or with no .cls/.txt, is skipped and counted; a .cls that is not an integer or not a
class, or a broken tar, is an error naming the shard and key.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tarfile
from pathlib import Path

from PIL import Image

from siglip.data.manifests import load_image
from siglip.eval.sets import RetrievalSet

log = logging.getLogger(__name__)

IMAGE_ORDER = ("webp", "png", "jpg", "jpeg")  # clip_benchmark's to_tuple order: the first present wins
CLASSNAMES, TEMPLATES, TYPE = "classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt"


class TarImage(str):
    """An image inside a tar shard, named `SHARD::KEY` (a str, so reports and JSON show it as a
    name); `open()` reads its bytes by offset and decodes them."""

    def __new__(cls, shard: str, key: str, offset: int, size: int):
        self = super().__new__(cls, f"{shard}::{key}")
        self.shard, self.key, self.offset, self.size = shard, key, offset, size
        return self

    def __reduce__(self):  # pickled into DataLoader workers
        return TarImage, (self.shard, self.key, self.offset, self.size)

    def open(self) -> Image.Image:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            return load_image(io.BytesIO(f.read(self.size)))


def read_lines(path: Path) -> list[str]:
    """clip_benchmark's `read_txt(...).splitlines()`, each line stripped, none dropped."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]


def dataset_type(folder: str | Path) -> str:
    """'classification', 'retrieval' or 'multilabel' (dataset_type.txt; absent = classification)."""
    path = Path(folder) / TYPE
    return path.read_text(encoding="utf-8").strip().lower() if path.is_file() else "classification"


def _numeric(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def wds_shards(folder: str | Path, split: str) -> list[Path]:
    """The split's shards: {0..n-1}.tar when nshards.txt says n (as clip_benchmark), else every *.tar."""
    d = Path(folder) / split
    if not d.is_dir():
        found = sorted(p.name for p in Path(folder).iterdir() if p.is_dir()) if Path(folder).is_dir() else []
        raise FileNotFoundError(f"{d}: no such split folder of a webdataset set (folders there: {found})")
    count = d / "nshards.txt"
    if count.is_file():
        text = count.read_text().strip()
        if not text.isdigit():
            raise ValueError(f"{count}: expected the number of shards, got {text[:40]!r}")
        shards = [d / f"{i}.tar" for i in range(int(text))]
        missing = [s for s in shards if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"{count} says {text} shards; {len(missing)} missing, e.g. {missing[0]}")
        return shards
    shards = sorted(d.glob("*.tar"), key=_numeric)
    if not shards:
        raise FileNotFoundError(f"{d}: no .tar shards")
    return shards


def scan_shard(shard: Path, wanted: str) -> list[tuple[str, TarImage | None, bytes | None]]:
    """One pass over a tar's headers: per key in order, (key, its image by offset or None, the bytes
    of its `wanted` member or None). Keys as webdataset makes them: the member path up to the first
    dot of the file name."""
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for m in tar:
                folder, name = os.path.split(m.name)
                stem, dot, ext = name.partition(".")
                if not m.isfile() or not dot or name.startswith("."):
                    continue
                parts = samples.setdefault(os.path.join(folder, stem), {})
                ext = ext.lower()
                if ext in IMAGE_ORDER:
                    parts[ext] = (m.offset_data, m.size)
                elif ext == wanted:
                    parts[ext] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{shard}: not a readable tar ({type(e).__name__}: {e})") from None
    out = []
    for key, parts in samples.items():
        ext = next((e for e in IMAGE_ORDER if e in parts), None)
        image = TarImage(str(shard), key, *parts[ext]) if ext else None
        out.append((key, image, parts.get(wanted)))
    return out


def _samples(folder: Path, split: str, wanted: str) -> list[tuple[TarImage, bytes]]:
    """(image, `wanted` bytes) of every complete sample; the incomplete ones are logged and counted."""
    good, no_image, no_label = [], [], []
    for shard in wds_shards(folder, split):
        for key, image, data in scan_shard(shard, wanted):
            if image is None:
                no_image.append(f"{shard}::{key}")
            elif data is None:
                no_label.append(f"{shard}::{key}")
            else:
                good.append((image, data))
    for what, keys in (("no image", no_image), (f"no .{wanted}", no_label)):
        if keys:
            log.warning("%s: %d samples skipped: %s (e.g. %s)", folder / split, len(keys), what, keys[0])
    if not good:
        raise ValueError(f"{folder / split}: no sample with an image and a .{wanted}")
    return good


def read_wds_classification(
    folder: str | Path, split: str = "test"
) -> tuple[list[TarImage], list[int], list[str], list[str]]:
    """(images, labels, class names, templates with `{0}` for the class name) of a classification set."""
    folder = Path(folder)
    kind = dataset_type(folder)
    if kind != "classification":
        raise ValueError(f"{folder}: {TYPE} says {kind!r}; zero-shot classification needs a classification set")
    if not (folder / CLASSNAMES).is_file():
        raise FileNotFoundError(f"{folder / CLASSNAMES}: missing (a webdataset set's class names, one a line)")
    classnames = read_lines(folder / CLASSNAMES)
    templates = [_our_template(t) for t in read_lines(folder / TEMPLATES)] if (folder / TEMPLATES).is_file() else []
    images, labels = [], []
    for image, data in _samples(folder, split, "cls"):
        try:
            label = int(data)
        except ValueError:
            raise ValueError(f"{image}.cls: not an integer label: {data[:40]!r}") from None
        if not 0 <= label < len(classnames):
            raise ValueError(f"{image}.cls: label {label} outside 0..{len(classnames) - 1} ({folder / CLASSNAMES})")
        images.append(image)
        labels.append(label)
    return images, labels, classnames, templates


def _our_template(template: str) -> str:
    """clip_benchmark fills `template.format(c=name)`; ours fill `template.format(name)`: every `{c}`
    becomes `{0}` (a template may name the class twice), any other brace is kept literally."""
    return template.replace("{", "{{").replace("}", "}}").replace("{{c}}", "{0}")


def read_wds_retrieval(folder: str | Path, split: str = "test") -> RetrievalSet:
    """Every image with every line of its .txt as a caption."""
    folder = Path(folder)
    kind = dataset_type(folder)
    if kind != "retrieval":
        raise ValueError(f"{folder}: {TYPE} says {kind!r}; retrieval needs a caption set (dataset_type.txt: retrieval)")
    images, texts, image_of_text = [], [], []
    for image, data in _samples(folder, split, "txt"):
        try:
            captions = data.decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"{image}.txt: not UTF-8 ({e})") from None
        texts += captions
        image_of_text += [len(images)] * len(captions)
        images.append(image)
    return RetrievalSet(images, texts, image_of_text)


def wds_list(path: str | Path) -> list[tuple[str, Path]]:
    """(name, folder) of the sets `--data-path` names: one folder, or a list file of folders, one a
    line (relative to the list's folder; blank lines and # comments skipped). A line `wds/NAME`, as in
    clip_benchmark's task lists, is the folder `wds_NAME` ('/' -> '-') beside the list."""
    path = Path(path)
    if path.is_dir():
        return [(set_name(path), path)]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: neither a webdataset set folder nor a list file of them")
    sets = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        rel = "wds_" + line[4:].replace("/", "-") if line.startswith("wds/") else line
        folder = path.parent / rel
        if not folder.is_dir():
            raise FileNotFoundError(f"{path}:{line_no}: {folder} is not a folder")
        sets.append((set_name(folder), folder))
    if not sets:
        raise ValueError(f"{path}: no set listed (one folder a line)")
    return sets


def set_name(folder: Path) -> str:
    """`wds/<name>` as clip_benchmark names the set: the folder's name without its `wds_` prefix."""
    return "wds/" + folder.resolve().name.removeprefix("wds_")


def sets_to_run(dataset: str, data_path: str, kind: str) -> tuple[list[tuple[str, str | Path]], bool]:
    """What an evaluation script of `kind` ('classification' or 'retrieval') runs: ([(name, path)],
    listed). For `--dataset wds` and a list file, every listed set of that kind (the others are
    skipped with a line saying which script runs them) and `listed` is True (one JSON per set);
    otherwise the one dataset."""
    if dataset != "wds":
        return [(dataset, data_path)], False
    listed = Path(data_path).is_file()
    script = {"classification": "evaluation/zero_shot.py", "retrieval": "evaluation/retrieval.py"}
    chosen = []
    for name, path in wds_list(data_path):
        if listed and dataset_type(path) != kind:
            print(
                f"{name}: a {dataset_type(path)} set, skipped ({script.get(dataset_type(path), 'no script')} runs it)"
            )
            continue
        chosen.append((name, path))
    return chosen, listed
