"""Issue 23's small fixes: `summary --dtype bf16` as `train --amp bf16` writes it, and a LICENSE
file that says what pyproject.toml says."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from densedsl import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("short, long", [("bf16", "bfloat16"), ("fp16", "float16")])
def test_summary_takes_the_amp_names_of_dtypes(capsys, short, long):
    assert cli.main(["summary", str(ROOT / "specs/tiny_digits.dense"), "--dtype", long, "--batch", "8"]) == 0
    expected = capsys.readouterr().out
    assert cli.main(["summary", str(ROOT / "specs/tiny_digits.dense"), "--dtype", short, "--batch", "8"]) == 0
    assert capsys.readouterr().out == expected and long in expected


def test_the_license_file_matches_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert declared == "BSD-3-Clause"
    assert (ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License\n")
