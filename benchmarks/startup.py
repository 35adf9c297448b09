"""Start-up time of the `siglip` command: `siglip --help` and `siglip search` on a small index, beside
`python -c "import torch"` (the floor: search needs torch), each in fresh processes.

    python benchmarks/startup.py                 # builds a demo-sized model + index in a temp dir, 5 runs each
    python benchmarks/startup.py --runs 9 --json
    python benchmarks/startup.py --index runs/demo/digits.index    # an index you have (its model from meta.json)

The model is the demo's architecture (configs/demo_config.py: tiny/4, 16 px, 16 tokens, vocabulary
256) with random weights, and the index 64 images of it, so the script needs nothing prepared; what
it times is imports and loading, not the search itself (0.002 s on the demo index). Each line: the
median wall time over --runs processes, their median CPU time (user + system: less moved by other
load on a shared machine than the wall time), and the ratio to `import torch`. Targets (issue 32):
`siglip search` <= 2.5 s and `siglip --help` <= 1 s wall on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"siglip --help": 1.0, "siglip search": 2.5}


def build_index(root: Path) -> Path:
    """A demo-sized model with random weights and an index of 64 small images, under `root`."""
    sys.path.insert(0, str(REPO))
    import torch
    from PIL import Image

    import siglip
    from siglip.cli import main
    from siglip.config import ModelConfig

    captions = [f"a handwritten {d}" for d in "zero one two three four five six seven eight nine".split()]
    tokenizer = siglip.Tokenizer.train(captions * 20, vocab_size=64, length=16)
    torch.manual_seed(0)
    net = siglip.SigLIP(ModelConfig.from_variant("tiny/4", image_size=16, text_length=16, vocab_size=64))
    siglip.save_model(root / "model.pt", net, tokenizer, "bicubic")
    for i in range(64):
        colour = ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)
        (root / "photos").mkdir(exist_ok=True)
        Image.new("RGB", (16 + i % 5, 16), colour).save(root / "photos" / f"{i:03d}.png")
    args = ["embed", str(root / "photos"), "--model", str(root / "model.pt"), "--out", str(root / "photos.index")]
    if main([*args, "--workers", "0"]) != 0:
        raise SystemExit("could not build the index")
    return root / "photos.index"


def time_process(argv: list[str], runs: int) -> dict:
    """Median wall and CPU seconds of `argv` run `runs` times, each in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "runs": runs}


def measure(index: Path, query: str, runs: int) -> dict[str, dict]:
    py = sys.executable
    cases = {
        'python -c "import torch"': [py, "-c", "import torch"],
        "import siglip": [py, "-c", "import siglip"],
        "siglip --help": [py, "-m", "siglip", "--help"],
        "siglip search": [py, "-m", "siglip", "search", str(index), query, "-k", "5"],
    }
    return {name: time_process(argv, runs) for name, argv in cases.items()}


def report(results: dict[str, dict]) -> None:
    torch_s = results['python -c "import torch"']["wall_s"]
    for name, r in results.items():
        line = f"{name:<28} wall {r['wall_s']:6.2f} s  cpu {r['cpu_s']:6.2f} s  ({r['wall_s'] / torch_s:4.2f}x import torch)"
        if name in TARGETS:
            line += f"  target <= {TARGETS[name]} s: {'MET' if r['wall_s'] <= TARGETS[name] else 'NOT MET'}"
        print(line)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python benchmarks/startup.py --runs 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=5, help="processes per command (the median is printed)")
    p.add_argument("--index", default="", help="an existing index to search (default: build a demo-sized one)")
    p.add_argument("--query", default="a handwritten seven")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(args.index) if args.index else build_index(Path(tmp))
        load = os.getloadavg()
        results = measure(index, args.query, args.runs)
    setup = {"cores": os.cpu_count(), "load_average": [round(x, 2) for x in load], "runs": args.runs}
    if args.json:
        print(json.dumps({"setup": setup, "results": results}, indent=1))
        return
    print(" ".join(f"{k}={v}" for k, v in setup.items()))
    report(results)


if __name__ == "__main__":
    main()
