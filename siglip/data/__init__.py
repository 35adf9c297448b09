"""Training data: image-caption pairs from manifests (CSV/TSV/JSONL) and caption folders
(`manifests.py`), the batches made from them (`loader.py`), webdataset tar shards streamed without
unpacking (`webdataset.py`), parquet files and datasets.save_to_disk folders streamed by row group
(`tables.py` resolves them, `parquet.py` and `arrow.py` read them, `table_stream.py` makes the
batches), and the bundled handwritten digits the demo trains on (`digits.py`).
Unreadable images are skipped and counted; malformed manifest lines are errors naming file and line.
"""

from siglip.data.loader import Collate, EpochBatchSampler, PairDataset, epoch_loader, steps_per_epoch
from siglip.data.manifests import (
    CAPTION_COLUMNS,
    IMAGE_EXTENSIONS,
    ManifestError,
    Pair,
    find_pairs,
    load_image,
    read_caption_folder,
    read_manifest,
)

__all__ = [
    "CAPTION_COLUMNS",
    "IMAGE_EXTENSIONS",
    "Collate",
    "EpochBatchSampler",
    "ManifestError",
    "Pair",
    "PairDataset",
    "epoch_loader",
    "find_pairs",
    "load_image",
    "read_caption_folder",
    "read_manifest",
    "steps_per_epoch",
]
