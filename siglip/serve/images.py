"""Images that arrive in requests (base64 or `data:` URLs) and thumbnails of the items in an index.

An uploaded image is opened lazily: PIL reads the header, and the pixel count is checked against the
limit before any pixel is decoded, so a decompression bomb (a 30,000 x 30,000 PNG is ~100 kB) costs
a header read and is refused with 400. Decoding runs in the caller's worker thread, never on the
event loop.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from siglip.index.sources import scan_shard
from siglip.serve.limits import ApiError
from siglip.transforms import to_rgb

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
THUMBNAIL_SIDE = 256


def is_image_data_url(value: str) -> bool:
    """True for `data:image/...;base64,...` (what the embeddings API embeds as an image)."""
    m = DATA_URL.match(value)
    return bool(m and m.group("b64") and (m.group("mime") or "").lower().startswith("image/"))


def decode_base64(value: str, field: str) -> bytes:
    """Plain base64 or a `data:...;base64,` URL -> bytes; 400 naming `field` when it is neither."""
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{field}: expected a base64 string or a data: URL, got {type(value).__name__}")
    m = DATA_URL.match(value)
    if m:
        if not m.group("b64"):
            raise ApiError(400, f"{field}: a data: URL must be base64 (data:image/png;base64,...)")
        value = value[m.end() :]
    try:
        return base64.b64decode(value.strip(), validate=False)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, f"{field}: not valid base64 ({e})") from e


def open_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Bytes -> an RGB/L PIL image, after checking the header's size against `max_pixels`.
    400 naming `field` for anything that is not a readable image within the limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # header only: no pixel decoded yet
    except Image.DecompressionBombError as e:  # PIL's own check (over 2 x Image.MAX_IMAGE_PIXELS) came first
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{pixels.group(1)} pixels" if pixels else "too many pixels"
        raise ApiError(400, f"{field}: {size}, over the limit of {max_pixels} (--max-pixels)") from e
    except Exception as e:  # noqa: BLE001 - any unreadable upload is the client's fault
        raise ApiError(400, f"{field}: not an image PIL can read ({type(e).__name__}: {e})") from e
    w, h = img.size
    if w * h > max_pixels:
        raise ApiError(400, f"{field}: {w} x {h} = {w * h} pixels, over the limit of {max_pixels} (--max-pixels)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data
        raise ApiError(400, f"{field}: the image data is corrupt or truncated ({type(e).__name__}: {e})") from e
    return img if img.mode in ("RGB", "L") else to_rgb(img)


def decode_image(value: str, field: str, max_pixels: int) -> Image.Image:
    return open_image(decode_base64(value, field), field, max_pixels)


# --------------------------------------------------------------------------------------------------
# thumbnails of index items: the item's own file (never a path taken from the request)


class ShardMembers:
    """Byte ranges of image members in webdataset shards, read from the tar headers once per shard."""

    def __init__(self):
        self._members: dict[str, dict[str, tuple[int, int]]] = {}
        self._lock = threading.Lock()

    def read(self, shard: str, key: str) -> bytes:
        with self._lock:
            if shard not in self._members:
                self._members[shard] = scan_shard(shard, captions=False)[0]
        offset, size = self._members[shard][key]
        with open(shard, "rb") as f:
            f.seek(offset)
            return f.read(size)


def thumbnail_jpeg(source: str | Path | bytes, side: int = THUMBNAIL_SIDE) -> bytes:
    """An image file (or its bytes) -> JPEG bytes with the longer side at most `side` px. JPEGs are
    decoded at reduced scale (draft mode) when that still covers `side`."""
    src = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(src) as img:
        if img.format == "JPEG":
            img.draft("RGB", (side, side))
        img.thumbnail((side, side))
        rgb = img.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=85)
    return out.getvalue()


class ThumbnailCache:
    """The last `size` thumbnails made (JPEG bytes, ~10 kB each)."""

    def __init__(self, size: int = 512):
        self.size, self.items = size, OrderedDict()

    def get(self, key: tuple[str, int]) -> bytes | None:
        if key in self.items:
            self.items.move_to_end(key)
        return self.items.get(key)

    def put(self, key: tuple[str, int], value: bytes) -> None:
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)
