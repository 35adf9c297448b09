"""A self-contained HTML page of search results: base64 JPEG thumbnails, no links to local files."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

THUMB = 160


def thumbnail_data_uri(item: dict) -> str:
    """A data: URI of the item's image, at most THUMB px a side; '' when it cannot be read."""
    from siglip.index.sources import Item

    try:
        if "shard" in item:
            return ""  # the offset is not kept in items.jsonl: the page shows the key
        img = Item(item.get("id", ""), item, item["path"]).open()
        img.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:  # noqa: BLE001 - a missing file costs its thumbnail, not the page
        return ""


def write_results_page(path: str, query: str, results: list[dict], items: list[dict]) -> None:
    cards = []
    for r, item in zip(results, items):
        uri = thumbnail_data_uri(item) if "path" in item else ""
        img = f'<img src="{uri}" alt="">' if uri else f"<pre>{html.escape(r['path'])}</pre>"
        caption = html.escape(item.get("caption", item.get("text", "")))
        cards.append(
            f"<figure>{img}<figcaption><b>#{r['rank']}</b> p={r['score']:.3f} cos={r['cosine']:+.3f}<br>"
            f"<small>{html.escape(r['path'])}</small><br>{caption}</figcaption></figure>"
        )
    page = (
        "<!doctype html><meta charset='utf-8'><title>siglip search</title>"
        "<style>body{font-family:sans-serif}figure{display:inline-block;width:180px;vertical-align:top;margin:6px}"
        "img{max-width:160px;max-height:160px}small{word-break:break-all;color:#555}</style>"
        f"<h3>{html.escape(query)}</h3>" + "\n".join(cards)
    )
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(page, encoding="utf-8")
