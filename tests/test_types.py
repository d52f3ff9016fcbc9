"""The type checker guards the closed unions (issue 21): a `match` over a union that ends in
`assert_never` fails `mypy` when a branch is forgotten, and the package is clean under the
`[tool.mypy]` configuration in pyproject.toml, so such a failure shows up in CI."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parent.parent

# The pattern the package uses for its stage and op unions (Stage, Lowered, ...).
MODULE = '''
from dataclasses import dataclass
from typing import Union, assert_never


@dataclass
class Block:
    layers: int


@dataclass
class Transition:
    channels: int


@dataclass
class Head:
    classes: int


Stage = Union[Block, Transition, Head]


def describe(stage: Stage) -> str:
    match stage:
        case Block():
            return f"{stage.layers} layers"
        case Transition():
            return f"{stage.channels} channels"
{head}
        case _:
            assert_never(stage)
'''
HEAD_BRANCH = '''        case Head():
            return f"{stage.classes} classes"'''


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    module = tmp_path / "stages.py"
    module.write_text(textwrap.dedent(source), encoding="utf-8")
    # an empty --config-file: none of the project's settings, only the check itself
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file=", "--python-version", "3.11", "--no-incremental",
         "--cache-dir", str(tmp_path / "cache"), str(module)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)


def test_mypy_reports_a_forgotten_branch_of_a_closed_union(tmp_path):
    forgotten = _mypy(tmp_path, MODULE.replace("{head}", ""))
    assert forgotten.returncode == 1, forgotten.stdout + forgotten.stderr
    assert 'Argument 1 to "assert_never" has incompatible type "Head"' in forgotten.stdout, forgotten.stdout
    assert "stages.py:" in forgotten.stdout

    complete = _mypy(tmp_path, MODULE.replace("{head}", HEAD_BRANCH))  # the same module, every branch
    assert complete.returncode == 0, complete.stdout + complete.stderr


@pytest.mark.slow
def test_the_package_is_clean_under_its_mypy_configuration():
    # `python -m mypy` in the root reads [tool.mypy] from pyproject.toml, as CI runs it
    result = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True, cwd=ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success"), result.stdout
