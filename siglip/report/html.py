"""The report page: one self-contained HTML file (PNG figures and thumbnails inline as base64) for
one or more runs: training curves overlaid, evaluation metrics over steps, the configs side by side
with differences highlighted, and the final evaluation's per-example outputs (confusion matrix and
worst classes for zero-shot, top images for a few retrieval queries)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from siglip.report import plots
from siglip.report.runs import Run, flatten

# (metrics.jsonl key, title, y label, log scale): the training curves, in page order
CURVES = (
    ("loss", "training loss", "loss", True),
    ("lr", "learning rate", "lr", False),
    ("t", "temperature t = exp(t')", "t", False),
    ("b", "bias b", "b", False),
    ("grad_norm", "gradient norm (before clipping)", "global L2 norm", True),
    ("images_per_s", "throughput", "images / s", False),
)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; }
img { max-width: 100%; } figure { display: inline-block; margin: 0.5em; vertical-align: top; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ccc; padding: 2px 6px; }
tr.diff td { background: #fff3b0; } .hit { outline: 3px solid #2a2; } .miss { outline: 3px solid #c22; }
.thumbs img { width: 64px; height: 64px; image-rendering: pixelated; margin: 2px; }
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _figure(png: bytes, caption: str) -> str:
    return f"<figure>{_img(png, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def training_section(runs: list[Run]) -> tuple[str, list[str]]:
    """The curves of CURVES, runs overlaid; returns (html, titles drawn)."""
    parts, drawn = ["<h2>Training</h2>"], []
    for key, title, ylabel, logy in CURVES:
        series = {
            r.name: ([row["step"] for row in r.train if key in row], [row[key] for row in r.train if key in row])
            for r in runs
        }
        series = {k: v for k, v in series.items() if v[0]}
        if not series:
            parts.append(f"<p>{html.escape(title)}: not in these runs' metrics.jsonl.</p>")
            continue
        resumed = {r.name: r.resume_steps for r in runs}
        parts.append(_figure(plots.curves(series, title, ylabel, logy, resumed), title))
        drawn.append(title)
    if any(r.resume_steps for r in runs):
        parts.append("<p>Dotted lines: where a run was resumed from its checkpoint.</p>")
    return "\n".join(parts), drawn


def evaluation_section(runs: list[Run]) -> tuple[str, list[str]]:
    """One plot per evaluation metric (`dataset/metric`) over steps, runs overlaid."""
    keys = list(dict.fromkeys(k for r in runs for row in r.evals for k in row if k != "step"))
    keys = [k for k in keys if not k.endswith("unreadable_images")]
    if not keys:
        return "<h2>Evaluation</h2><p>No evaluations in these runs (list evaluators in the config's evals).</p>", []
    parts, drawn = ["<h2>Evaluation</h2>"], []
    for key in keys:
        series = {
            r.name: ([row["step"] for row in r.evals if key in row], [row[key] for row in r.evals if key in row])
            for r in runs
        }
        series = {k: v for k, v in series.items() if v[0]}
        parts.append(_figure(plots.curves(series, key, key.split("/", 1)[1]), key))
        drawn.append(key)
    return "\n".join(parts), drawn


def config_section(runs: list[Run]) -> str:
    """Every config key, runs as columns; rows where the runs differ are highlighted and come first."""
    flat = [flatten(r.config) for r in runs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    differ = [k for k in keys if len({repr(f.get(k, "-")) for f in flat}) > 1]
    head = "".join(f"<th>{html.escape(r.name)}</th>" for r in runs)
    rows = []
    for k in differ + [k for k in keys if k not in differ]:
        cells = "".join(f"<td>{html.escape(str(f.get(k, '-')))}</td>" for f in flat)
        rows.append(f"<tr{' class=diff' if k in differ else ''}><td>{html.escape(k)}</td>{cells}</tr>")
    note = f"{len(differ)} key(s) differ (highlighted, first)." if len(runs) > 1 else ""
    return f"<h2>Configs</h2><p>{note}</p><table><tr><th>key</th>{head}</tr>{''.join(rows)}</table>"


def zero_shot_section(run: Run, name: str, out: dict, worst: int = 10) -> str:
    """Confusion matrix and the `worst` classes by recall, from an eval/<name>.json zero-shot file."""
    classes, labels, preds = out["classnames"], out["labels"], out["predictions"]
    c = len(classes)
    matrix = [[0] * c for _ in range(c)]
    for y, p in zip(labels, preds):
        if p >= 0:  # -1: an unreadable image, a miss in no column
            matrix[y][p] += 1
    support = [sum(1 for y in labels if y == k) for k in range(c)]
    recall = [matrix[k][k] / support[k] if support[k] else float("nan") for k in range(c)]
    order = sorted((k for k in range(c) if support[k]), key=lambda k: recall[k])[:worst]
    rows = []
    for k in order:
        confused = max((j for j in range(c) if j != k), key=lambda j: matrix[k][j], default=None)
        with_ = f"{classes[confused]} ({matrix[k][confused]})" if confused is not None and matrix[k][confused] else ""
        rows.append(
            f"<tr><td>{html.escape(classes[k])}</td><td>{recall[k]:.3f}</td><td>{support[k]}</td>"
            f"<td>{html.escape(with_)}</td></tr>"
        )
    title = f"{run.name}: {name} confusion matrix (step {out.get('step', '?')})"
    table = "<tr><th>class</th><th>recall</th><th>images</th><th>most often taken for</th></tr>" + "".join(rows)
    return (
        f"<h3>{html.escape(title)}</h3>{_figure(plots.confusion(matrix, classes, title), title)}<table>{table}</table>"
    )


def _thumbnail(path: str, size: int = 64) -> str:
    """An image file as an inline PNG thumbnail, or a note when it cannot be read any more."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size * 2, size * 2))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except OSError:
        return f"<span>[{html.escape(Path(path).name)}: unreadable]</span>"
    return _img(buf.getvalue(), Path(path).name)


def retrieval_section(run: Run, name: str, out: dict) -> str:
    """A few text queries with their top images (green: the query's own image)."""
    rows = []
    for q in out["queries"]:
        thumbs = "".join(
            f'<span class="{"hit" if hit["image"] == q["target"] else "miss"}">{_thumbnail(hit["image"])}</span>'
            for hit in q["top"]
        )
        rows.append(
            f"<tr><td>{html.escape(q['text'])}</td><td class=thumbs>{_thumbnail(q['target'])}</td>"
            f"<td class=thumbs>{thumbs}</td></tr>"
        )
    head = "<tr><th>text query</th><th>its image</th><th>top images (green = its own)</th></tr>"
    return (
        f"<h3>{html.escape(run.name)}: {html.escape(name)} retrieval examples</h3><table>{head}{''.join(rows)}</table>"
    )


def outputs_section(runs: list[Run]) -> tuple[str, list[str]]:
    parts, drawn = [], []
    for run in runs:
        for name, out in run.outputs.items():
            if out.get("task") == "zero_shot":
                parts.append(zero_shot_section(run, name, out))
                drawn.append(f"{name} confusion matrix")
            elif out.get("task") == "retrieval":
                parts.append(retrieval_section(run, name, out))
                drawn.append(f"{name} retrieval examples")
    if not parts:
        return "", []
    return "<h2>Final evaluation, per example</h2>" + "\n".join(parts), drawn


def build_report(runs: list[Run], title: str = "SigLIP runs") -> tuple[str, list[str]]:
    """The page's HTML and the titles of what it shows (curves, metrics, per-example sections)."""
    listing = "".join(
        f"<li><b>{html.escape(r.name)}</b>: {html.escape(str(r.path))}, {len(r.train)} logged steps up to "
        f"{r.train[-1]['step'] if r.train else 0}{', resumed' if r.resume_steps else ''}</li>"
        for r in runs
    )
    sections, drawn = [], []
    for make in (training_section, evaluation_section, outputs_section):
        part, titles = make(runs)
        sections.append(part)
        drawn += titles
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><ul>{listing}</ul>"
        + "\n".join(sections)
        + config_section(runs)
        + "</body></html>"
    )
    return page, drawn
