"""The README's promises: its Python examples run, and its two commands are the ones CI runs."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

README = (ROOT / "README.md").read_text("utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.parametrize("code", PYTHON_BLOCKS, ids=[f"block{i}" for i in range(len(PYTHON_BLOCKS))])
def test_python_examples_run(code, monkeypatch):
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def test_readme_has_exactly_one_main_and_one_test_command():
    for marker in ("main-command", "test-command"):
        blocks = re.findall(rf"<!-- {marker} -->\n```\n(.*?)\n```\n<!-- /{marker} -->", README, re.S)
        assert len(blocks) == 1 and "\n" not in blocks[0], marker


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text("utf-8")
    assert "test-command" in ci and "main-command" in ci


def test_every_zoo_spec_the_readme_names_exists():
    for name in re.findall(r"specs/(\w+)\.dense", README):
        assert (ROOT / "specs" / f"{name}.dense").exists(), name
