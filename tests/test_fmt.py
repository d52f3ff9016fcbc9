"""The formatter: canonical output, comments kept, idempotent, meaning-preserving."""

from __future__ import annotations

import pytest
from conftest import ZOO

from densedsl.core.source import Source
from densedsl.language.fmt import format_expr, format_spec
from densedsl.language.syntax import parse_expression, parse_source


def fmt(text: str) -> str:
    return format_spec(parse_source(Source.from_text(text, "t.dense")))


def parse(text: str):
    return parse_source(Source.from_text(text, "t.dense"))


@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.name)
def test_zoo_files_are_formatted(path):
    text = path.read_text("utf-8")
    assert fmt(text) == text


MESSY = """# top comment


network  a( x = 1 ,y=2*x ) {   # header
  input 3x8x8
  # before stem



  stem { conv 2*(x+1) ; relu }   # trailing
  repeat 2 { dense layers=x+-1 growth=4; transition }
  head classes = ( 10 )
  # end of body
}  # closing
network b {
\tinput 1x8x8
}
# after
"""

EXPECTED = """# top comment

network a(x=1, y=2*x) {  # header
    input 3x8x8
    # before stem

    stem {  # trailing
        conv 2*(x+1)
        relu
    }
    repeat 2 {
        dense layers=x+(-1) growth=4
        transition
    }
    head classes=10
    # end of body
}  # closing

network b {
    input 1x8x8
}
# after
"""


def test_canonical_layout():
    assert fmt(MESSY) == EXPECTED


def test_formatting_is_idempotent_and_preserves_meaning():
    once = fmt(MESSY)
    assert fmt(once) == once
    assert parse(once) == parse(MESSY)


@pytest.mark.parametrize("text, canonical", [
    ("(depth - 4) / 6", "(depth-4)/6"),
    ("a - (b - c)", "a-(b-c)"),
    ("(a - b) - c", "a-b-c"),
    ("a / (b * c)", "a/(b*c)"),
    ("(a * b) / c", "a*b/c"),
    ("-(a + b)", "-(a+b)"),
    ("max(1 , floor( x/2 ))", "max(1, floor(x/2))"),
    ("7_978_856", "7_978_856"),
    ("5.668G", "5.668G"),
])
def test_expressions_keep_only_needed_parentheses(text, canonical):
    e = parse_expression(text)
    assert format_expr(e) == canonical
    assert parse_expression(canonical) == e


def test_empty_file_formats_to_empty_text():
    assert fmt("") == ""
    assert fmt("# only a comment\n") == "# only a comment\n"
