"""Images that arrive in requests (base64 or `data:` URLs) and thumbnails of the items in an index.

An uploaded image is opened lazily: PIL reads the header, and the pixel count is checked against the
limit before any pixel is decoded, so a decompression bomb (a 30,000 x 30,000 PNG is ~100 kB) costs
a header read and is refused with 400. Decoding runs in the caller's worker thread, never on the
event loop.

A thumbnail URL names the index's generation and when it expires:
`/items/{index}/{row}/thumbnail?sig=S&g=G&exp=E` (`sig`, an HMAC of all four under the API key, only
when the server has one). A URL of another generation (the index was appended to or rewritten since)
or past `exp` (--url-ttl) answers 410, so an old URL never shows another item's image.

Only the formats browsers and cameras send are decoded from requests (REQUEST_FORMATS): PIL has ~40
readers, most for rare formats whose parsers see little use and little fuzzing (EPS hands its data
to Ghostscript where installed), and a request should not reach them. TIFF is left out too: its reader hands data to
libtiff's many codecs. Another format gets 415 naming it, told from its first bytes without running
its reader. `siglip embed` reads the user's own files and takes every format PIL knows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import os
import re
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from siglip.index.sources import scan_shard
from siglip.serve.limits import ApiError, check_bearer
from siglip.transforms import to_rgb

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
THUMBNAIL_SIDE = 256
URL_TTL_S = 3600  # --url-ttl: how long a thumbnail URL handed out works
SHARDS_HELD = 32  # shards whose member table (~100 B per member) ShardMembers keeps
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
    """Byte ranges of image members in webdataset shards, read from the tar headers once per shard
    (and again when the shard file changes); the tables of the last `size` shards used are kept."""

    def __init__(self, size: int = SHARDS_HELD):
        self.size = size
        self._members: OrderedDict[tuple, dict[str, tuple[int, int]]] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, shard: str, key: str) -> bytes:
        """The bytes of member `key` of `shard`; OSError when the shard is gone, KeyError when it has
        no such member."""
        with open(shard, "rb") as f:
            st = os.fstat(f.fileno())
            ident = (shard, st.st_ino, st.st_mtime_ns, st.st_size)  # a rewritten shard is read again
            with self._lock:
                members = self._members.get(ident)
                if members is not None:
                    self._members.move_to_end(ident)
            if members is None:
                members = scan_shard(shard, captions=False)[0]
                with self._lock:
                    self._members[ident] = members
                    while len(self._members) > self.size:
                        self._members.popitem(last=False)
            offset, size = members[key]
            f.seek(offset)
            return f.read(size)

    def __len__(self) -> int:
        return len(self._members)


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

    def get(self, key: tuple) -> bytes | None:
        if key in self.items:
            self.items.move_to_end(key)
        return self.items.get(key)

    def put(self, key: tuple, value: bytes) -> None:
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)


# --------------------------------------------------------------------------------------------------
# thumbnail URLs: signed, of one generation, expiring


def url_signature(api_key: str, index: str, row: int | str, generation: str, expires: str) -> str:
    """The `sig` of a thumbnail URL: HMAC-SHA256 of "index/row/generation/expires" under the key (32 hex)."""
    msg = f"{index}/{row}/{generation}/{expires}".encode()
    return hmac.new(api_key.encode(), msg, hashlib.sha256).hexdigest()[:32]


def thumbnail_query(api_key: str, index: str, row: int, generation: str, ttl_s: float, now: float | None = None) -> str:
    """The query string of a thumbnail URL: `sig` (with a key), `g` (the generation), `exp` (unix seconds).
    `exp` is rounded up to the next minute, so a row's URL stays the same for a minute (browser caches)."""
    step = 60 if ttl_s >= 60 else 1
    expires = str((int(time.time() if now is None else now) // step + 1) * step + int(ttl_s))
    sig = f"sig={url_signature(api_key, index, row, generation, expires)}&" if api_key else ""
    return f"{sig}g={generation}&exp={expires}"


def check_thumbnail_url(request, api_key: str, index: str, row: str, now: float | None = None) -> None:
    """Before anything about the index is told: with a key, a valid `sig` (403 if forged) or the Bearer
    header (401 without either); then 410 past `exp`. The generation is checked by the route."""
    params = request.query_params
    g, exp = params.get("g", ""), params.get("exp", "")
    if api_key:
        sig = params.get("sig")
        if sig is None:
            check_bearer(request, api_key)
        elif not secrets.compare_digest(sig.encode(), url_signature(api_key, index, row, g, exp).encode()):
            raise ApiError(403, "query parameter sig: not a valid signature for this thumbnail")
    if exp and not (exp.isascii() and exp.isdigit() and len(exp) <= 12):
        raise ApiError(400, f"query parameter exp: {exp[:20]!r} is not a time (unix seconds)")
    if exp and int(exp) < (time.time() if now is None else now):
        raise ApiError(410, "this thumbnail URL has expired (--url-ttl); search again for a fresh one")


def check_generation(request, index: str, tag: str) -> None:
    """410 when the URL names another generation of the index than the one served now."""
    g = request.query_params.get("g")
    if g is not None and g != tag:
        raise ApiError(
            410, f"index {index!r} has changed since this thumbnail URL was made (generation {g[:24]!r}, now "
            f"{tag!r}); search again for a fresh one",
        )  # fmt: skip
