"""siglip report RUN_DIR [RUN_DIR ...] --out report.html: one HTML page comparing training runs
(same as python -m siglip.report; see siglip/report).

siglip report runs/demo --out demo.html
siglip report runs/experiments/init_t_b/* --out init.html --title "t and b at step 0"
"""

from __future__ import annotations

PASSTHROUGH = True


def main(argv: list[str]) -> int:
    from siglip.report.__main__ import main as report_main

    return report_main(argv, prog="siglip report")
