"""`python -m siglip.report RUN_DIR [RUN_DIR ...] --out report.html`: one self-contained HTML page
(figures inline) comparing training runs: loss, lr, t, b, gradient norm, throughput and every
evaluation metric over steps, runs overlaid; the configs side by side with their differences
highlighted; the final zero-shot confusion matrix and worst classes, and retrieval examples.

    python -m siglip.report runs/demo --out demo.html
    python -m siglip.report runs/experiments/loss_vs_batch/* --out batch.html --title "batch sweep"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from siglip.report.runs import RunError, load_run, unique_names


def main(argv: list[str] | None = None, prog: str = "python -m siglip.report") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="One HTML page with the curves, configs and evaluation details of training runs.",
        epilog=f"example: {prog} runs/demo runs/demo_softmax --out report.html",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training output folders (with metrics.jsonl)")
    parser.add_argument("--out", default="report.html", help="the HTML file to write")
    parser.add_argument("--title", default="", help="page title (default: the run names)")
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.runs]
    try:
        runs = [load_run(p, name) for p, name in zip(paths, unique_names(paths))]
        from siglip.report.html import build_report

        page, drawn = build_report(runs, args.title or ", ".join(r.name for r in runs))
    except (RunError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page)
    os.replace(tmp, out)  # atomic: a reader never sees half a page
    if args.json:
        print(json.dumps({"out": str(out), "runs": [r.name for r in runs], "figures": drawn, "bytes": len(page)}))
    else:
        print(f"wrote {out} ({len(page) / 1e3:.0f} kB): {len(runs)} run(s), {len(drawn)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
