"""The grammar and the Transformer: every construct, positions, and syntax errors."""

from __future__ import annotations

from fractions import Fraction

import pytest

from densedsl import SpecError
from densedsl.core.source import Source
from densedsl.language import ast
from densedsl.language.syntax import parse_expression, parse_source, parser


def parse(text: str) -> ast.SpecFile:
    return parse_source(Source.from_text(text, "t.dense"))


def only_statements(text: str) -> tuple[ast.Statement, ...]:
    return parse("network n {\n" + text + "\n}\n").networks[0].body


def codes(text: str) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse(text)
    return [d.code.code for d in e.value.diagnostics]


def test_grammar_has_no_conflicts():
    # strict=True raises on shift/reduce conflicts and regex collisions, so a new conflict
    # fails here instead of silently picking a shift
    parser(strict=True)


def test_network_with_parameters_and_positions():
    f = parse("# c\nnetwork dn(depth=100, growth=12) {\n    input 3x32x32\n}\n")
    (net,) = f.networks
    assert net.name == "dn"
    assert [p.name for p in net.params] == ["depth", "growth"]
    assert net.params[0].default.value == 100
    assert (net.name_span.line, net.name_span.column, net.name_span.end_column) == (2, 9, 11)
    assert f.comments[0].text == "# c"


def test_shape_is_one_token_not_number_and_name():
    (stmt,) = only_statements("input 3x224x224")
    assert stmt.arg == ast.ShapeLit(dims=(3, 224, 224))
    assert (stmt.arg.span.column, stmt.arg.span.end_column) == (7, 16)


@pytest.mark.parametrize("text, value", [
    ("12", Fraction(12)), ("0.5", Fraction(1, 2)), (".25", Fraction(1, 4)), ("1e-4", Fraction(1, 10000)),
    ("5.668G", Fraction(5_668_000_000)), ("7_978_856", Fraction(7978856)), ("2K", Fraction(2000)),
    ("1.5M", Fraction(1_500_000)), ("3T", Fraction(3 * 10**12)),
])
def test_number_literals_are_exact(text, value):
    e = parse_expression(text)
    assert isinstance(e, ast.Number) and e.value == value and e.text == text


def test_arithmetic_precedence_and_associativity():
    e = parse_expression("(depth-4)/6*2 - -1")
    assert isinstance(e, ast.BinOp) and e.op == "-"
    assert isinstance(e.right, ast.UnaryOp)
    left = e.left
    assert left.op == "*" and left.left.op == "/" and left.left.left.op == "-"
    assert parse_expression("a-b-c").left.op == "-"  # left-associative
    assert parse_expression("10//3%2").op == "%"


def test_calls():
    e = parse_expression("max(1, floor(x/2))")
    assert isinstance(e, ast.Call) and e.func == "max" and len(e.args) == 2
    assert parse_expression("f()").args == ()


def test_statement_forms():
    body = only_statements(
        "defaults growth=32 bottleneck=4\n"
        "stem {\n  conv 64 kernel=7 stride=2 padding=3\n  norm\n  relu\n}\n"
        "repeat 2 { dense layers=6; transition }\n"
        "head classes=1000")
    defaults, stem, repeat, head = body
    assert [s.name for s in defaults.settings] == ["growth", "bottleneck"]
    assert [s.keyword for s in stem.body] == ["conv", "norm", "relu"]
    assert stem.body[0].arg.value == 64
    assert repeat.arg.value == 2 and [s.keyword for s in repeat.body] == ["dense", "transition"]
    assert head.body is None and stem.body is not None


def test_empty_body_and_semicolons_and_blank_lines():
    body = only_statements("stem {}\n\n;; dense layers=1 growth=2;\n")
    assert body[0].body == () and body[1].keyword == "dense"


def test_comments_everywhere_are_collected():
    f = parse("# a\nnetwork n { # b\n  input 3x8x8 # c\n  # d\n} # e\n# f")
    assert [c.text for c in f.comments] == ["# a", "# b", "# c", "# d", "# e", "# f"]


def test_several_networks():
    f = parse("network a {\n}\nnetwork b {\n}\n")
    assert [n.name for n in f.networks] == ["a", "b"]


def test_line_continuation():
    (stmt,) = only_statements("dense layers=6 \\\n    growth=12")
    assert [s.name for s in stmt.settings] == ["layers", "growth"]


def test_keywords_are_not_reserved_inside_networks():
    # only `network` is a keyword; statement names are checked by the resolver
    (stmt,) = only_statements("network_thing x=1")
    assert stmt.keyword == "network_thing"


@pytest.mark.parametrize("text, expected", [
    ("network n {\n  dense layers 6\n}\n", ["E001"]),
    ("network n {\n  input 3x8x8\n", ["E002"]),
    ("network n {\n  dense layers=$\n}\n", ["E003"]),
    ("network n {\n  dense growth=12k\n}\n", ["E005"]),
    ("network n {\n  dense growth=1e99999\n}\n", ["E005"]),
    ("dense layers=6\n", ["E001"]),
    ("network {\n}\n", ["E001"]),
    ("network n {\n  dense layers=(1\n}\n", ["E001"]),
])
def test_syntax_error_codes(text, expected):
    assert codes(text) == expected


def test_every_broken_line_is_reported_once():
    text = "network n {\n  dense layers=6 )\n  transition compression=\n  dense layers=(\n  head classes=10\n}\n"
    with pytest.raises(SpecError) as e:
        parse(text)
    assert [(d.code.code, d.line) for d in e.value.diagnostics] == [("E001", 2), ("E001", 3), ("E001", 4)]


def test_error_in_an_opening_line_does_not_cascade_to_its_closing_brace():
    text = "network n {\n  stem ) {\n    relu\n  }\n  dense layers=6 growth=1\n}\n"
    with pytest.raises(SpecError) as e:
        parse(text)
    assert [d.line for d in e.value.diagnostics] == [2]


def test_unexpected_end_points_at_the_end_of_the_text():
    with pytest.raises(SpecError) as e:
        parse("network n {\n  input 3x8x8\n\n\n")
    (diag,) = e.value.diagnostics
    assert diag.code.code == "E002" and diag.line == 2


def test_deep_nesting_is_refused_before_parsing():
    with pytest.raises(SpecError) as e:
        parse("network n {\n  dense layers=" + "(" * 5000 + "1" + ")" * 5000 + "\n}\n")
    assert e.value.diagnostics[0].code.code == "E004"
    with pytest.raises(SpecError) as e:
        parse("network n {\n" + "repeat 1 {\n" * 500 + "}\n" * 500 + "}\n")
    assert e.value.diagnostics[0].code.code == "E004"


def test_braces_in_comments_do_not_count_as_nesting():
    parse("# " + "{" * 1000 + "\nnetwork n {\n}\n")


def test_columns_count_tabs_as_one_character_and_carets_expand_them():
    with pytest.raises(SpecError) as e:
        parse("network n {\n\tdense layers=6 grwoth=(\n}\n")
    text = str(e.value)
    line, caret = text.splitlines()[1:3]
    assert "\t" not in line
    assert caret.index("^") == len("    ") + len("        dense layers=6 grwoth=(")


def test_every_terminal_is_named_in_the_grammar():
    """syntax.py's messages name terminals; lark's generated names renumber when the grammar
    changes, so none may exist."""
    from densedsl.language.syntax import parser
    names = {t.name for t in parser().terminals}
    assert not {n for n in names if n.startswith("__ANON")}
    assert {"LPAR", "FLOORDIV", "EQUAL", "RBRACE"} <= names
