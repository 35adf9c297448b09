"""The docs are tested: their runnable commands run, their links and file names exist, and every
`siglip` subcommand's --help example is also in docs/use.md.

A fenced ```bash block in README.md or docs/*.md is runnable when the line just before its fence is
a marker:

    <!-- test -->          fast: run by `make test` (the whole page's fast blocks in ~5-15 s)
    <!-- test: slow -->    trains or takes minutes: run by `make test-slow`

Unmarked blocks (paths such as /data/imagenet that need the user's data, servers that never exit)
are read, not run. Each page runs in its own sandbox folder, its blocks in page order, each with
`bash -e` (a non-zero exit, an unknown command or a renamed flag fails the test naming FILE:LINE).
The sandbox holds what a reader has after `make demo`: the repo's scripts and configs (linked),
data/digits (the bundled demo data) and runs/demo/siglip_demo.pt, here a tiny random model so the
fast blocks need no training; slow runs train for real (`make demo` included: its pip install is
marked done and .venv/bin points at the running interpreter, the only part not exercised).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKERS = {"<!-- test -->": False, "<!-- test: slow -->": True}  # marker -> slow
LINKED = ["configs", "training", "evaluation", "benchmarks", "experiments", "siglip", "Makefile", "pyproject.toml"]


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    code: str
    slow: bool

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def fenced_blocks(page: Path) -> list[tuple[int, str, str, str]]:
    """Every fenced block of a page as (fence line, info string, code, the line before the fence)."""
    lines = page.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+)\s*([^`\s]*)[^`]*$", lines[i])  # an info string holds no backtick
        if not m:
            i += 1
            continue
        indent, fence, info = m.groups()
        j = i + 1
        while j < len(lines) and not re.match(rf"^\s*{fence}`*\s*$", lines[j]):
            j += 1
        if j == len(lines):
            raise AssertionError(f"{page.relative_to(REPO)}:{i + 1}: fenced block never closed")
        body = "\n".join(x[len(indent) :] if x.startswith(indent) else x for x in lines[i + 1 : j])
        out.append((i + 1, info, body, lines[i - 1].strip() if i else ""))
        i = j + 1
    return out


def runnable_blocks(page: Path) -> list[Block]:
    """The marked bash blocks of a page; a marker that is misspelt or not before a bash fence fails."""
    blocks, lines = [], page.read_text().splitlines()
    fence_lines = {}
    for line, info, code, before in fenced_blocks(page):
        fence_lines[line] = info
        if before in MARKERS:
            assert info == "bash", f"{page.relative_to(REPO)}:{line}: a test marker before a '{info}' block"
            blocks.append(Block(page, line, code, MARKERS[before]))
    for n, text in enumerate(lines, 1):
        if text.strip().startswith("<!-- test"):
            assert text.strip() in MARKERS, f"{page.relative_to(REPO)}:{n}: unknown marker {text.strip()!r}"
            assert n + 1 in fence_lines, f"{page.relative_to(REPO)}:{n}: marker not right before a fence"
    return blocks


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory) -> Path:
    """data/digits and a tiny random runs/demo/siglip_demo.pt, made once per session."""
    import torch

    import siglip
    from siglip.config import ModelConfig
    from siglip.data.digits import ensure_digits
    from siglip.model import SigLIP
    from siglip.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("docs-template")
    digits = ensure_digits(root / "data" / "digits")
    captions = [row.split(",", 1)[1] for row in (digits / "train.csv").read_text().splitlines()[1:]]
    tok = Tokenizer.train(captions, vocab_size=64, length=16)
    torch.manual_seed(0)
    cfg = ModelConfig.from_variant("mu/4", image_size=16, text_length=16, vocab_size=tok.vocab_size)
    (root / "runs" / "demo").mkdir(parents=True)
    siglip.save_model(root / "runs" / "demo" / "siglip_demo.pt", SigLIP(cfg), tok, "bicubic")
    return root


def make_sandbox(template: Path, where: Path) -> dict[str, str]:
    """A reader's folder after `make demo`; returns the environment the blocks run in."""
    shutil.copytree(template, where, copy_function=os.link)  # hard links: cheap, no writes go back
    for name in LINKED:
        (where / name).symlink_to(REPO / name)
    bin_dir = where / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    py = sys.executable
    _script(bin_dir / "python", f'#!/bin/sh\nexec "{py}" "$@"\n')
    _script(bin_dir / "python3", f'#!/bin/sh\nexec "{py}" "$@"\n')
    _script(bin_dir / "siglip", f'#!/bin/sh\nexec "{py}" -m siglip "$@"\n')
    _script(bin_dir / "torchrun", f'#!/bin/sh\nexec "{py}" -m torch.distributed.run "$@"\n')
    (bin_dir / "activate").write_text('export PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd):$PATH"\n')
    (where / ".venv" / ".demo").touch()  # make demo's install step, marked done
    (where / ".venv" / ".installed").touch()
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO),
        HF_HUB_OFFLINE="1",
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
    )
    env.pop("VIRTUAL_ENV", None)
    return env


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> None:
    timeout = 3600 if block.slow else 180
    try:
        proc = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", block.code],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.where()}: still running after {timeout} s:\n{block.code}")
    if proc.returncode != 0:
        out = [x for x in re.split(r"[\r\n]+", proc.stdout + "\n" + proc.stderr) if x.strip()]  # progress bars use \r
        unknown = " (unknown command)" if proc.returncode == 127 or "unknown command" in proc.stderr else ""
        pytest.fail(
            f"{block.where()}: exit code {proc.returncode}{unknown}\n{block.code}\n--- output (tail) ---\n"
            + "\n".join(out[-15:])
        )


def _pages_with(slow: bool) -> list[Path]:
    return [p for p in PAGES if any(b.slow == slow for b in runnable_blocks(p))]


def _ids(pages: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO)) for p in pages]


@pytest.mark.parametrize("page", _pages_with(False), ids=_ids(_pages_with(False)))
def test_fast_blocks_run(page, demo_template, tmp_path):
    env = make_sandbox(demo_template, tmp_path / "sandbox")
    for block in runnable_blocks(page):
        if not block.slow:
            run_block(block, tmp_path / "sandbox", env)


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages_with(True), ids=_ids(_pages_with(True)))
def test_all_blocks_run_in_order(page, demo_template, tmp_path):
    env = make_sandbox(demo_template, tmp_path / "sandbox")
    for block in runnable_blocks(page):
        run_block(block, tmp_path / "sandbox", env)


def test_markers_are_used():
    """At least the newcomer path is tested: guards against a collector that finds nothing."""
    readme = runnable_blocks(REPO / "README.md")
    assert any(not b.slow for b in readme) and any(b.slow for b in readme)
    assert any("siglip embed" in b.code for b in runnable_blocks(REPO / "docs" / "use.md"))


# --- links and file names ---------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")
# `path/like/this.py`, `configs/demo_config.py`, `siglip/loss/`: repo-relative, with a known top folder
TICKED = re.compile(r"`((?:configs|siglip|training|evaluation|benchmarks|experiments|tests|docs)/[\w./-]*)`")
TOP = re.compile(r"^((?:configs|siglip|training|evaluation|benchmarks|experiments|tests|docs)/[\w./-]*)")


def named_paths(page: Path) -> list[tuple[int, str, Path]]:
    """(line, as written, resolved path) for every relative link and backticked repo path of a page."""
    found = []
    for n, text in enumerate(page.read_text().splitlines(), 1):
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            found.append((n, target, (page.parent / target.split("#")[0]).resolve()))
        for name in TICKED.findall(text):
            if not any(c in name for c in "*{<"):
                found.append((n, name, REPO / name))
    for line, info, code, _ in fenced_blocks(page):  # scripts and configs named in commands
        for token in code.split() if info == "bash" else []:
            m = TOP.match(token.strip("'\""))
            if m and m.group(1).endswith(".py"):
                found.append((line, m.group(1), REPO / m.group(1)))
    return found


def file_map_paths(page: Path) -> list[tuple[int, str, Path]]:
    """The file map (the block after a '## File map' heading): each line's path, and for a folder
    line every `name.py` its description lists, which must be in that folder."""
    found, in_map = [], False
    for n, text in enumerate(page.read_text().splitlines(), 1):
        if text.startswith("## "):
            in_map = text.strip().lower() == "## file map"
        m = TOP.match(text) if in_map else None
        if not m:
            continue
        head = m.group(1)
        found.append((n, head, REPO / head))
        if head.endswith("/"):
            for name in re.findall(r"(?<![\w/.])(\w+\.py)\b", text[len(head) :]):
                found.append((n, head + name, REPO / head / name))
    return found


def test_links_and_named_files_exist():
    missing = []
    for page in PAGES:
        for n, written, path in named_paths(page) + file_map_paths(page):
            if path.exists():
                continue
            missing.append(f"{page.relative_to(REPO)}:{n}: {written}")
    assert not missing, "named in the docs but not in the repo:\n" + "\n".join(missing)


def anchors(page: Path) -> set[str]:
    """The anchors a code host makes for a page's headings: lowercase, punctuation dropped, spaces -> '-'."""
    fence_lines = {n for line, _, code, _ in fenced_blocks(page) for n in range(line, line + code.count("\n") + 3)}
    heads = [t for n, t in enumerate(page.read_text().splitlines(), 1) if t.startswith("#") and n not in fence_lines]
    return {re.sub(r"[^\w\- ]", "", h.lstrip("#").strip().lower()).replace(" ", "-") for h in heads}


def test_link_anchors_exist():
    bad = []
    for page in PAGES:
        for n, text in enumerate(page.read_text().splitlines(), 1):
            for target in LINK.findall(text):
                if re.match(r"^[a-z]+:", target) or "#" not in target:
                    continue
                path, anchor = target.split("#", 1)
                dest = (page.parent / path).resolve() if path else page
                if dest.suffix == ".md" and dest.exists() and anchor not in anchors(dest):
                    bad.append(f"{page.relative_to(REPO)}:{n}: {target} (headings: {sorted(anchors(dest))})")
    assert not bad, "links to headings that do not exist:\n" + "\n".join(bad)


def test_file_map_check_finds_what_is_missing(tmp_path):
    page = tmp_path / "map.md"
    page.write_text("## File map\n\n```\nsiglip/loss/   sigmoid.py (the loss), nothere.py (gone)\n```\n")
    names = [w for _, w, p in file_map_paths(page) if not p.exists()]
    assert names == ["siglip/loss/nothere.py"]


# --- help text and docs agree -----------------------------------------------------------------


def help_text(name: str) -> str:
    from siglip.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        main([name, "--help"])
    return buf.getvalue()


def examples(name: str, text: str) -> list[str]:
    """Command lines in a --help text that run this subcommand, comments and extra spaces removed."""
    pattern = re.compile(rf"^(?:siglip|torchrun .*-m siglip|python -m siglip) {name} ")
    lines = [re.sub(r"^examples?:\s*", "", re.sub(r"\s+#.*$", "", x.strip())) for x in text.splitlines()]
    return [" ".join(x.split()) for x in lines if pattern.match(x) and not re.search(r"[\[\]]|SRC DST|RUN_DIR", x)]


def _commands() -> list[str]:
    from siglip.cli import COMMANDS

    return list(COMMANDS)


@pytest.mark.parametrize("name", _commands())
def test_help_example_is_in_use_md(name):
    text = help_text(name)
    found = examples(name, text)
    assert found, f"`siglip {name} --help` shows no example command line:\n{text}"
    use_md = {  # each command line of use.md's bash blocks, continuations joined, comment removed
        " ".join(re.sub(r"\s+#.*$", "", x).split())
        for _, info, code, _ in fenced_blocks(REPO / "docs" / "use.md")
        if info == "bash"
        for x in code.replace("\\\n", " ").splitlines()
    }
    assert any(ex in use_md for ex in found), (
        f"none of `siglip {name} --help`'s examples is a command line in a bash block of docs/use.md: {found}"
    )


# --- unmarked commands: their flags still parse ---------------------------------------------------


def documented_commands() -> list[tuple[str, list[str]]]:
    """(FILE:LINE, argv) of every `siglip ...` and `training/train.py ...` line in a bash block."""
    out = []
    for page in PAGES:
        for line, info, code, _ in fenced_blocks(page):
            if info != "bash":
                continue
            logical = []  # (first line, text) with backslash continuations joined
            for k, raw in enumerate(code.splitlines()):
                if logical and logical[-1][1].endswith("\\"):
                    logical[-1] = (logical[-1][0], logical[-1][1][:-1] + " " + raw)
                else:
                    logical.append((k, raw))
            for k, text in logical:
                if "..." in text or not text.strip():
                    continue
                tokens = shlex.split(text, comments=True)
                for i, tok in enumerate(tokens):
                    if tok == "training/train.py" or (tok == "siglip" and (i == 0 or tokens[i - 1] == "-m")):
                        out.append((f"{page.relative_to(REPO)}:{line + 1 + k}", tokens[i:]))
                        break
    return out


def test_documented_flags_parse(monkeypatch):
    """Unmarked blocks are not run, but their flags are parsed by the real parsers: a renamed flag
    or subcommand fails here too (the config file is loaded and validated for train.py lines)."""
    from siglip.cli import COMMANDS, parser_for
    from siglip.train.args import parse_train_args

    monkeypatch.chdir(REPO)
    bad, checked = [], 0
    for where, argv in documented_commands():
        try:
            if argv[0] == "training/train.py":
                parse_train_args(argv[1:])
            elif argv[1] in COMMANDS:
                module = importlib.import_module(COMMANDS[argv[1]][0])
                if getattr(module, "PASSTHROUGH", False):
                    continue
                parser_for(argv[1], module).parse_args(argv[2:])
            else:
                bad.append(f"{where}: unknown subcommand siglip {argv[1]}")
                continue
            checked += 1
        except (SystemExit, ValueError, KeyError, FileNotFoundError) as e:
            bad.append(f"{where}: {' '.join(argv)}: {type(e).__name__} {e}")
    assert not bad, "documented commands that no longer parse:\n" + "\n".join(bad)
    assert checked > 20
