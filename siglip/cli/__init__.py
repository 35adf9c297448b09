"""The `siglip` command (installed by `pip install .`; also `python -m siglip`): put a model to work.

    siglip embed photos/ --model siglip_b16.pt --out photos.index
    siglip search photos.index "a dog on a beach" -k 10 --html dogs.html
    siglip classify photos/ --model siglip_b16.pt --labels "cat,dog,car" --csv labels.csv
    siglip score --model siglip_b16.pt --image dog.jpg --text "a dog on a beach"

One module per subcommand in this folder, imported only when that subcommand runs (so `siglip
search` never imports what `siglip embed` needs). Each has a docstring (its --help, with an example),
`add_arguments(parser)` and `run(args) -> int`; a `PASSTHROUGH` module gets the raw arguments
(`main(argv)`). A new subcommand is one file here and one line in COMMANDS.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import sys

# name -> (module, one line for `siglip --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "embed": ("siglip.cli.embed", "embed a folder, manifest, shards or text file into an index (resumable)"),
    "search": ("siglip.cli.search", "top-k of an index for a text or an image (approximate index when built)"),
    "index": ("siglip.cli.index", "build an approximate index (faiss) under a memory budget, with measured recall"),
    "classify": ("siglip.cli.classify", "zero-shot labels: per-label probabilities and the top label per image"),
    "score": ("siglip.cli.score", "the probability sigmoid(t * cos + b) of image-text pairs"),
    "convert": ("siglip.cli.convert", "convert a checkpoint (same as python -m siglip.convert)"),
    "serve": ("siglip.cli.serve", "serve a model and its indexes over HTTP (OpenAI, clip-retrieval, a search page)"),
    "export": ("siglip.cli.export", "hand an index to clip-retrieval folders or vector databases (Milvus, ...)"),
    "report": ("siglip.cli.report", "one HTML page of training runs: curves, configs, evaluation details"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return (
        "usage: siglip COMMAND [ARGS]   (siglip COMMAND --help for its flags and an example)\n\n"
        + "\n".join(lines)
        + "\n\nexample:\n  siglip embed photos/ --model siglip_b16.pt --out photos.index\n"
        '  siglip search photos.index "a dog on a beach" -k 5\n'
    )


def parser_for(name: str, module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"siglip {name}", description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    module.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        print(
            f"siglip: unknown command {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""), file=sys.stderr
        )
        print(usage(), file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[name][0])
    try:
        if getattr(module, "PASSTHROUGH", False):
            return module.main(rest) or 0
        return module.run(parser_for(name, module).parse_args(rest)) or 0
    except (OSError, ValueError, KeyError, RuntimeError, ModuleNotFoundError) as e:  # OSError: a path's errno, named
        if os.environ.get("SIGLIP_DEBUG"):
            raise
        print(f"siglip {name}: error: {e}", file=sys.stderr)
        return 1
