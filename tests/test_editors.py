"""The editor files: the TextMate grammar (snapshot and assertion tests with the npm package
vscode-tmgrammar-test) and the VS Code extension's manifest.

The grammar tests need Node and `vscode-tmgrammar-test` (`npm install -g vscode-tmgrammar-test`,
or `npm install` in editors/vscode). Without them they skip, except under CI (CI=true), which
installs both (.ci/run) and so must run them. After changing the grammar on purpose, rewrite
the snapshots with DENSEDSL_UPDATE_SNAPSHOTS=1 and review their diff.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from densedsl.language import resolve

ROOT = Path(__file__).resolve().parent.parent
GRAMMAR = ROOT / "grammars" / "densedsl.tmLanguage.json"
DATA = ROOT / "tests" / "data" / "grammar"
SNAPSHOTS = DATA / "snapshots"
ZOO = sorted((ROOT / "specs").glob("*.dense"))


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(ROOT / "editors" / "vscode" / "node_modules" / ".bin"))
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed; .ci/run installs it with npm")
        pytest.skip(f"{name} not installed (npm install -g vscode-tmgrammar-test)")
    return found


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_grammar_snapshots_of_the_zoo(tmp_path):
    snap = _tool("vscode-tmgrammar-snap")
    for spec in ZOO:  # the snapshots live apart from specs/, so copy both side by side
        shutil.copy(spec, tmp_path / spec.name)
        committed = SNAPSHOTS / f"{spec.name}.snap"
        if committed.exists():
            shutil.copy(committed, tmp_path / committed.name)
    update = os.environ.get("DENSEDSL_UPDATE_SNAPSHOTS") == "1"
    result = _run([snap, "-g", str(GRAMMAR), "-s", "source.densedsl", str(tmp_path / "*.dense")]
                  + (["--updateSnapshot"] if update else []))
    if update:
        SNAPSHOTS.mkdir(parents=True, exist_ok=True)
        for made in tmp_path.glob("*.snap"):
            shutil.copy(made, SNAPSHOTS / made.name)
    assert result.returncode == 0, result.stdout + result.stderr
    missing = [s.name for s in ZOO if not (SNAPSHOTS / f"{s.name}.snap").exists()]
    assert not missing, f"no snapshot for {missing}: run with DENSEDSL_UPDATE_SNAPSHOTS=1"


def test_grammar_assertions():
    check = _tool("vscode-tmgrammar-test")
    result = _run([check, "-g", str(GRAMMAR), str(DATA / "assertions.dense")])
    assert result.returncode == 0, result.stdout + result.stderr


def _alternatives(grammar: dict, scope: str) -> tuple[str, ...]:
    """The words of the `(a|b|c)` pattern that gives `scope`."""
    [pattern] = [p["match"] for p in grammar["repository"]["statement"]["patterns"] if p.get("name") == scope]
    return tuple(re.search(r"\(([a-z0-9_|]+)\)", pattern).group(1).split("|"))


def test_grammar_highlights_the_resolvers_statements_and_ops():
    grammar = json.loads(GRAMMAR.read_text())
    assert _alternatives(grammar, "keyword.other.statement.densedsl") == resolve.STATEMENTS
    assert _alternatives(grammar, "support.function.op.densedsl") == resolve.STEM_OPS


def test_grammar_highlights_every_value_completion_offers():
    """The keyword values the language server completes (`norm=group`, `activation=silu`, …) are
    the words the grammar colours as constants."""
    from densedsl.lsp import features
    grammar = json.loads(GRAMMAR.read_text())
    [pattern] = [p["match"] for p in grammar["repository"]["value"]["patterns"]
                 if p.get("name") == "constant.language.densedsl"]
    words = set(re.search(r"\(([a-z_0-9|]+)\)", pattern).group(1).split("|"))
    offered = {v for keyword in features._BUILDS for setting in features.SETTINGS.get(keyword, ())
               for v in features.enumerated_values(keyword, setting)}
    assert offered and offered <= words, sorted(offered - words)


def test_vscode_extension_manifest():
    manifest = json.loads((ROOT / "editors" / "vscode" / "package.json").read_text())
    [language] = manifest["contributes"]["languages"]
    [grammar] = manifest["contributes"]["grammars"]
    assert language["extensions"] == [".dense"]
    assert grammar["scopeName"] == json.loads(GRAMMAR.read_text())["scopeName"]
    # the packaged grammar is a copy of grammars/ made at packaging time, never a second source
    assert "../../grammars/densedsl.tmLanguage.json" in manifest["scripts"]["vscode:prepublish"]
    config = json.loads((ROOT / "editors" / "vscode" / language["configuration"]).read_text())
    assert config["comments"]["lineComment"] == "#"
