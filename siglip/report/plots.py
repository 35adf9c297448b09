"""Figures as PNG bytes (matplotlib, the `report` extra, imported only when a figure is drawn):
curves over steps with runs overlaid, a confusion matrix, thumbnails, and a sweep's metric against
the swept value."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

INSTALL_HINT = "plots need matplotlib: pip install 'siglip[report]' (or pip install matplotlib)"


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend; a clear error naming the extra when missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def curves(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    ylabel: str,
    logy: bool = False,
    resumed_at: dict[str, Sequence[int]] | None = None,
) -> bytes:
    """One line per run: series[name] = (steps, values). `resumed_at[name]`: steps where that run
    was resumed, drawn as dotted verticals."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, (name, (x, y)) in enumerate(series.items()):
        color = f"C{i % 10}"
        ax.plot(x, y, label=name, color=color, marker="o" if len(x) < 12 else None, markersize=3)
        for s in (resumed_at or {}).get(name, []):
            ax.axvline(s, color=color, linestyle=":", linewidth=1)
    if logy and all(v > 0 for _, y in series.values() for v in y):
        ax.set_yscale("log")
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return _png(fig)


def confusion(matrix: Sequence[Sequence[int]], classnames: Sequence[str], title: str) -> bytes:
    """A (c, c) count matrix, rows = true class, columns = predicted; each row shaded by its share."""
    plt = pyplot()
    c = len(classnames)
    rows = [[v / max(1, sum(r)) for v in r] for r in matrix]
    size = min(12.0, 2.0 + 0.35 * c)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    if c <= 40:  # names and counts are readable up to ~40 classes
        ax.set_xticks(range(c), classnames, rotation=90, fontsize=7)
        ax.set_yticks(range(c), classnames, fontsize=7)
        if c <= 20:
            for i in range(c):
                for j in range(c):
                    if matrix[i][j]:
                        color = "white" if rows[i][j] > 0.5 else "black"
                        ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=7, color=color)
    ax.set(title=title, xlabel="predicted", ylabel="true")
    return _png(fig)


def sweep(
    rows: Sequence[dict],
    x: str,
    group: str | None,
    metrics: Sequence[str],
    title: str,
    logx: bool = False,
) -> bytes:
    """One panel per metric: the metric against column `x`, one line per value of column `group`
    (or a single line). Values are read as floats where they parse; else x is categorical."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False, layout="constrained")
    groups = list(dict.fromkeys(str(r[group]) for r in rows)) if group else [""]
    xs = list(dict.fromkeys(str(r[x]) for r in rows))
    numeric = all(_is_number(v) for v in xs)
    for ax, metric in zip(axes[0], metrics):
        for i, g in enumerate(groups):
            sel = [r for r in rows if not group or str(r[group]) == g]
            sel = [r for r in sel if _is_number(r.get(metric))]
            px = [float(r[x]) if numeric else xs.index(str(r[x])) for r in sel]
            style = "-" if numeric else "none"  # categories are not a continuum: points only
            ax.plot(
                px, [float(r[metric]) for r in sel], marker="o", linestyle=style, label=g or None, color=f"C{i % 10}"
            )
        if not numeric:
            ax.set_xticks(range(len(xs)), xs, rotation=30, fontsize=8)
        if logx and numeric:
            ax.set_xscale("log", base=2)
            ax.set_xticks([float(v) for v in xs], xs)
        ax.set(xlabel=x, title=metric)
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=8, title=group)
    fig.suptitle(title)
    return _png(fig)


def _is_number(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
