"""The layout's promises, checked on the source: no import cycles inside `siglip`, no file over 400
lines, no function over 60, a training script under 150 lines, and scripts that never import each other."""

import ast
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "siglip"
SCRIPTS = [REPO / d for d in ("training", "evaluation", "benchmarks", "experiments")]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The siglip modules that `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in modules}
    return found


def test_no_import_cycles():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: imports_of(p, set(files)) - {m} for m, p in files.items()}
    # a package's __init__ re-exporting its own submodules is not a cycle through them
    for m in graph:
        graph[m] = {d for d in graph[m] if not (files[d].name == "__init__.py" and m.startswith(d + "."))}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, "import cycle: " + " -> ".join(stack[stack.index(d) :] + [d])
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_files_and_functions_stay_small():
    too_long = []
    for path in [*PACKAGE.rglob("*.py"), *(p for d in SCRIPTS if d.is_dir() for p in d.rglob("*.py"))]:
        source = path.read_text()
        if len(source.splitlines()) > 400:
            too_long.append(f"{path.relative_to(REPO)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not too_long, too_long
    assert len((REPO / "training/train.py").read_text().splitlines()) <= 150


def test_scripts_never_import_each_other():
    for d in SCRIPTS:
        for path in d.rglob("*.py") if d.is_dir() else []:
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom):
                    mods = [node.module or ""]
                bad = [m for m in mods if m.split(".")[0] in ("training", "evaluation", "benchmarks", "experiments")]
                assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_every_package_folder_says_what_lives_there():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 80, f"{init.relative_to(REPO)} needs a one-paragraph docstring"
