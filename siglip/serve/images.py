"""Images that arrive in requests (base64 or `data:` URLs) and thumbnails of the items in an index.

An uploaded image is opened lazily: PIL reads the header, and the pixel count is checked against the
limit before any pixel is decoded, so a decompression bomb (a 30,000 x 30,000 PNG is ~100 kB) costs
a header read and is refused with 400. Decoding runs in the caller's worker thread, never on the
event loop.

Only the formats browsers and cameras send are decoded from requests (REQUEST_FORMATS): PIL has ~40
readers, most for rare formats whose parsers see little use and little fuzzing (EPS hands its data
to Ghostscript where installed), and a request should not reach them. TIFF is left out too: its reader hands data to
libtiff's many codecs. Another format gets 415 naming it, told from its first bytes without running
its reader. `siglip embed` reads the user's own files and takes every format PIL knows.
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
REQUEST_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")  # PIL's names; JPEG includes MPO (camera JPEGs)
MAGIC = [  # (first bytes, offset, PIL's name) of formats refused from requests, to name them in the 415
    (b"II*\x00", 0, "TIFF"), (b"MM\x00*", 0, "TIFF"), (b"%!PS", 0, "EPS"), (b"\xc5\xd0\xd3\xc6", 0, "EPS"),
    (b"ftypavif", 4, "AVIF"), (b"ftypavis", 4, "AVIF"), (b"ftyphei", 4, "HEIF"), (b"ftypmif1", 4, "HEIF"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG2000"), (b"\xffO\xffQ", 0, "JPEG2000"), (b"8BPS", 0, "PSD"),
    (b"\x00\x00\x01\x00", 0, "ICO"), (b"icns", 0, "ICNS"), (b"qoif", 0, "QOI"), (b"DDS ", 0, "DDS"),
    (b"SIMPLE  =", 0, "FITS"), (b"\x01\xda", 0, "SGI"), (b"\x59\xa6\x6a\x95", 0, "SUN"), (b"\x0a", 0, "PCX"),
    (b"P1", 0, "PPM"), (b"P2", 0, "PPM"), (b"P3", 0, "PPM"), (b"P4", 0, "PPM"), (b"P5", 0, "PPM"), (b"P6", 0, "PPM"),
]  # fmt: skip


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


def sniff_format(data: bytes) -> str | None:
    """PIL's name for a refused format, from its first bytes (no reader runs); None if not in MAGIC."""
    return next((name for magic, at, name in MAGIC if data[at : at + len(magic)] == magic), None)


def open_image(data: bytes, field: str, max_pixels: int, formats: tuple[str, ...] = REQUEST_FORMATS) -> Image.Image:
    """Bytes -> an RGB/L PIL image of one of `formats`, after checking the header's size against
    `max_pixels`. 415 naming the format for another one; 400 naming `field` for anything that is not
    a readable image within the limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=formats)  # header only: no pixel decoded yet
    except Image.DecompressionBombError as e:  # PIL's own check (over 2 x Image.MAX_IMAGE_PIXELS) came first
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{pixels.group(1)} pixels" if pixels else "too many pixels"
        raise ApiError(400, f"{field}: {size}, over the limit of {max_pixels} (--max-pixels)") from e
    except Exception as e:  # noqa: BLE001 - any unreadable upload is the client's fault
        accepted = ", ".join(formats)
        if (kind := sniff_format(data)) is not None:
            raise ApiError(415, f"{field}: a {kind} image; this server decodes only {accepted} uploads") from e
        raise ApiError(400, f"{field}: not an image in a format this server reads ({accepted}): {e}") from e
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
