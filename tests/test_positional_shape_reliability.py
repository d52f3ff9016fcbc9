"""A statement whose number is written as an expression shape (`conv 3 x n`): the resolver
refuses it like a literal shape (`conv 3x3`), E104, instead of failing inside the evaluator (the
grammar lets any statement take `expr x expr` as its argument; mypy found the path)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import densedsl
from densedsl import SpecError

SPEC = """network n(k=3) {
    input 3x32x32
    %s
}
"""


@pytest.mark.parametrize("line, keyword", [
    ("stem { conv 16 x k }", "conv"),
    ("stem { linear 4 x k }", "linear"),
    ("stem { dropout 1 x k }", "dropout"),
    ("repeat 2 x k { dense layers=2 growth=4 }", "repeat"),
])
def test_a_dims_argument_is_refused_as_a_shape(line, keyword):
    with pytest.raises(SpecError) as e:
        densedsl.parse(SPEC % line)
    found = [(x.code.code, x.line, x.message) for x in e.value.diagnostics]
    assert (("E104", 3, f"{keyword} expects a number here, not a shape")) in found, found


def test_the_cli_exits_1_not_3(tmp_path):
    spec = tmp_path / "dims.dense"
    spec.write_text(SPEC % "stem { conv 16 x k }")
    r = subprocess.run([sys.executable, "-m", "densedsl", "check", str(spec)], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    assert "error[E104]" in r.stderr and "internal error" not in r.stderr
