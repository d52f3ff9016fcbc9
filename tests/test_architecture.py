"""The package reads as its pipeline: each folder imports only the folders below it, nothing
imports in a circle (imports inside functions included), and no module grows past a screenful
of screens. docs/architecture.md draws the same layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "densedsl"

# What each folder may import (besides itself), lowest layer first. The top-level modules
# (`__init__`, `__main__`) and the command line (`cli/`) may import anything; nothing imports them
# but `__version__`.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "language": {"core"},
    "ir": {"core", "language"},
    "analysis": {"core", "language", "ir"},
    "views": {"core", "language", "ir", "analysis"},
    "nn": {"core", "language", "ir", "analysis"},
    "training": {"core", "language", "ir", "analysis", "views", "nn"},
    "lsp": {"core", "language", "ir", "analysis"},
    "testing": {"core", "language", "ir", "analysis"},
    "cli": {"core", "language", "ir", "analysis", "views", "nn", "training", "lsp", "testing"},
}
MAX_LINES = 800


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node that runs: `if TYPE_CHECKING:` blocks are left out, as import-linter's
    `exclude_type_checking_imports` does (annotations may name a type of a higher layer)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(path: Path) -> set[str]:
    """Every densedsl module `path` imports when it runs, at the top or inside a function."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("densedsl"):
                continue
            # `from . import x` names a submodule when x is one
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _exists(sub) else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("densedsl")}
    return found - {module}


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


GRAPH = {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and _exists(module) and
                                            (PACKAGE / parts[1]).is_dir()) else "top"


def test_every_folder_imports_only_the_layers_below_it():
    wrong = []
    for module, targets in GRAPH.items():
        folder = _folder(module)
        if folder == "top":
            continue
        for target in targets:
            if target == "densedsl":  # `from .. import __version__`
                continue
            other = _folder(target)
            if other != folder and other not in ALLOWED[folder]:
                wrong.append(f"{module} imports {target} ({folder} may import {sorted(ALLOWED[folder])})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_even_through_imports_inside_functions():
    import networkx as nx
    g = nx.DiGraph((m, t) for m, ts in GRAPH.items() for t in ts if t in GRAPH and t != "densedsl")
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert cycles == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_grows_past_the_limit(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_the_checker_sees_imports_inside_functions():
    """The graph above must include imports made inside functions, or the rules check nothing:
    cli imports the build only inside a command; and it must leave out `if TYPE_CHECKING:`
    imports (loaded.py names the readers' set types only for annotations)."""
    assert "densedsl.nn.build" in GRAPH["densedsl.cli.spec"]
    assert "densedsl.training.datasets" not in GRAPH["densedsl.training.loaded"]
    assert "densedsl.training.loaded" in GRAPH["densedsl.training.datasets"]


def test_every_package_is_installed():
    """pyproject.toml lists the packages setuptools installs: a folder left out works in a
    source checkout and fails on a user's machine (ModuleNotFoundError at `import densedsl`)."""
    import tomllib
    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {_module(p) for p in PACKAGE.rglob("__init__.py")}
    assert folders <= listed, sorted(folders - listed)
