"""Hostile and careless input to the front end (parse, resolve, fmt, the library API).

Every case must end in a SpecError (or a documented TypeError for a wrong Python argument type)
after bounded work: the limits are checked structurally (the parser is never reached, values
never exceed `ast.MAX_DIGITS`, at most `MAX_SHOWN` diagnostics are printed), never by timing.
"""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import densedsl
from densedsl.core import diagnostics as d
from densedsl.core.source import Source
from densedsl.language import ast, syntax
from densedsl.language.fmt import format_expr, format_spec
from densedsl.language.resolve import resolve
from densedsl.language.spec import load_all
from densedsl.language.syntax import MAX_OPERATORS, parse_source

HEAD = "network n {\n    input 3x8x8\n"
TAIL = "}\n"


def spec_with(value: str) -> str:
    return f"{HEAD}    dense layers={value} growth=4\n{TAIL}"


def diagnostics_of(text: str, **kw) -> tuple[d.Diagnostic, ...]:
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(text, **kw)
    return e.value.diagnostics


def codes(text: str, **kw) -> list[str]:
    return [x.code.code for x in diagnostics_of(text, **kw)]


# --- arithmetic: bounded values, no recursion ---------------------------------------------------

def squaring_chain(steps: int, base: str = "1.0001") -> str:
    params = ", ".join([f"p0={base}"] + [f"p{i}=p{i - 1}*p{i - 1}" for i in range(1, steps + 1)])
    return f"network n({params}) {{\n    input 3x8x8\n    dense layers=1 growth=4\n}}\n"


def test_chained_squaring_stops_at_the_first_value_too_long_with_one_error():
    (diag,) = diagnostics_of(squaring_chain(40))
    assert diag.code == "E006"
    # 1.0001 = 10001/10000: p6 has 4*64 = 256 digits, p7 would have 512
    assert diag.span.source.text[diag.span.start:diag.span.end] == "p6*p6"


def test_values_up_to_the_bound_are_exact():
    spec = densedsl.parse(squaring_chain(6))
    p6 = dict(spec.network.parameters)["p6"]
    assert Fraction(p6) == Fraction(10001, 10000) ** 64


@pytest.mark.parametrize("value, code", [
    ("1" * 5000, "E005"),                      # past Python's 4300-digit int-string limit
    ("1" * 401, "E005"),
    ("1e999", "E005"),
    ("1e-999", "E005"),
    ("*".join(["9" * 399] * 3), "E006"),
    ("1" + "/".join([""] + ["9" * 399] * 3), "E006"),
    ("+".join(f"1/{p}" for p in range(2, 200)), "E006"),   # denominators grow as lcm(2..n)
])
def test_huge_literals_and_intermediate_values_are_refused(value, code):
    assert codes(spec_with(value)) == [code]


def test_values_beyond_floats_stay_exact_and_print_short():
    spec = densedsl.parse("network n(p=1e350/7) {\n    input 3x8x8\n    dense layers=1 growth=4\n}\n")
    assert dict(spec.network.parameters)["p"] == Fraction(10**350, 7)  # no float holds it
    (diag,) = diagnostics_of(spec_with("1e-350"))
    assert diag.code == "E106" and len(diag.message) < 100


@pytest.mark.parametrize("figure", ["params=9e399/7", "flops=1e19", "depth=-1"])
def test_expected_figures_are_counts_in_a_sane_range(figure):
    # 9e399/7 reached the analysis, whose float() of it raised OverflowError
    (diag,) = diagnostics_of(f"{HEAD}    dense layers=1 growth=4\n    expect {figure}\n{TAIL}")
    assert diag.code == "E105"


def test_long_unary_chain_is_refused_where_it_crosses_the_limit():
    (diag,) = diagnostics_of(spec_with("-" * 1000 + "1"))
    assert diag.code == "E006" and diag.line == 3
    assert "more than 200 operators" in diag.message


@pytest.mark.parametrize("op", ["+", "-", "*", "/", "//", "%"])
def test_long_binary_chains_are_refused(op):
    assert codes(spec_with(op.join(["1"] * 600))) == ["E006"]


def test_an_expression_of_exactly_the_limit_is_accepted():
    network = densedsl.parse(spec_with("+".join(["1"] * MAX_OPERATORS) + "-" + str(MAX_OPERATORS - 1))).network
    assert network.stages[0].layers == 1
    assert codes(spec_with("+".join(["1"] * (MAX_OPERATORS + 2)))) == ["E006"]


def test_call_arguments_count_as_operators():
    assert codes(spec_with("max(" + ",".join(["1"] * 300) + ")")) == ["E006"]


def test_min_and_max_of_one_argument_are_that_argument():
    assert densedsl.parse(spec_with("max(" * 30 + "3" + ")" * 30)).network.stages[0].layers == 3
    assert densedsl.parse(spec_with("min(5)")).network.stages[0].layers == 5


def _deep(depth: int) -> ast.Expr:
    """`1-(-1)-(-1)…` as an AST deeper than any recursion limit (only code can build it)."""
    e: ast.Expr = ast.Number(value=Fraction(1), text="1")
    for _ in range(depth):
        e = ast.BinOp(op="-", left=e, right=ast.UnaryOp(op="-", operand=ast.Number(value=Fraction(1), text="1")))
    return e


def test_evaluation_and_printing_do_not_recurse_on_depth():
    deep = _deep(20_000)  # 20 times the recursion limit
    file = ast.SpecFile(networks=(ast.NetworkDef(name="n", params=(ast.Param(name="p", default=deep),), body=(
        ast.Statement(keyword="input", arg=ast.ShapeLit(dims=(3, 8, 8))),
        ast.Statement(keyword="dense", settings=(ast.Setting(name="growth", value=ast.Name(id="p")),
                                                 ast.Setting(name="layers", value=ast.Number(value=Fraction(1), text="1")))),
    )),))
    assert resolve(file, None).stages[0].growth == 20_001
    assert format_expr(deep) == "1" + "-(-1)" * 20_000


def test_a_failed_parameter_does_not_cascade_into_unknown_names():
    assert codes(squaring_chain(11)) == ["E006"]


# --- input size -------------------------------------------------------------------------------

@pytest.fixture
def parser_unused(monkeypatch):
    """Fail the test if lark is asked to parse: the input must be refused before that."""
    def boom(*args, **kwargs):
        raise AssertionError("the parser was reached")
    monkeypatch.setattr(syntax, "parser", boom)


@pytest.mark.parametrize("text, where", [
    ("\n" * (3 * 1024 * 1024), "longer than"),                      # cost 1.8 GB in lark's lexer
    (HEAD + ";" * (2 * 1024 * 1024) + TAIL, "longer than"),
    ("#" * (2 * 1024 * 1024), "longer than"),                       # was quadratic backtracking
    (HEAD + "\n" * syntax.MAX_LINES + TAIL, "lines"),
    (HEAD + "    foo bar=1\n" * 6000 + TAIL, "tokens"),
    (HEAD + ";" * (syntax.MAX_TOKENS + 10) + TAIL, "tokens"),
])
def test_oversized_text_is_refused_before_parsing(parser_unused, text, where):
    (diag,) = diagnostics_of(text)
    assert diag.code == "E006" and where in diag.message
    assert diag.line is not None  # located, even though the file is never parsed


def test_a_text_of_exactly_the_line_limit_is_accepted():
    lines = HEAD + "\n" * (syntax.MAX_LINES - 3) + TAIL
    assert lines.count("\n") == syntax.MAX_LINES
    densedsl.parse(lines)
    assert codes(lines + "\n") == ["E006"]
    assert codes(lines + "#") == ["E006"]


def test_the_line_table_is_not_built_to_refuse_a_huge_file():
    source = Source.from_text("\n" * (8 * 1024 * 1024), "x.dense")
    with pytest.raises(densedsl.SpecError) as e:
        parse_source(source)
    assert e.value.diagnostics[0].line == syntax.MAX_CHARS + 1
    assert not source._starts  # 8 million line starts would cost ~300 MB


def test_too_many_networks():
    text = "".join(f"network n{i} {{}}\n" for i in range(syntax.MAX_NETWORKS + 1))
    (diag,) = diagnostics_of(text)
    assert diag.code == "E006" and diag.line == syntax.MAX_NETWORKS + 1


@pytest.mark.parametrize("network, message", [
    ("network n{i} {{ input 3x8x8; repeat 1000 {{ dense layers=1 growth=1 }} }}\n", "2,000 stages together"),
    ("network n{i} {{ input 3x8x8; dense layers=3000 growth=1 }}\n", "8,000 dense layers together"),
])
def test_a_file_of_large_networks_is_refused_once_its_budget_is_spent(network, message, tmp_path):
    path = tmp_path / "many.dense"
    path.write_text("".join(network.format(i=i) for i in range(syntax.MAX_NETWORKS)))
    with pytest.raises(densedsl.SpecError) as e:
        load_all(path)
    (diag,) = e.value.diagnostics  # reported once; the later networks are not resolved at all
    assert diag.code == "E304" and message in diag.message and diag.line == 3
    densedsl.load(path, network="n200")  # each network alone is fine


def test_one_network_of_too_many_layers():
    (diag,) = diagnostics_of(spec_with("4001"))
    assert diag.code == "E304" and "more than 4,000 dense layers" in diag.message


def test_at_most_fifty_diagnostics_are_printed_and_the_rest_counted():
    text = HEAD + "    foo\n" * 70 + TAIL
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(text)
    assert len(e.value.diagnostics) == 70  # the library keeps them all
    rendered = str(e.value)
    assert rendered.count("error[E101]") == d.MAX_SHOWN
    assert rendered.endswith("... and 20 more errors not shown")


def test_syntax_error_recovery_stops_when_the_retries_have_read_the_text_again(monkeypatch):
    chunk = "network n{} {{\n    input 3x8x8\n" + "    dense layers=1 growth=4\n" * 60 + "    ) oops\n}}\n"
    text = "".join(chunk.format(i) for i in range(40))
    attempts = []
    real = syntax.parser()

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def parse(self, text, start):
            attempts.append(1)
            return real.parse(text, start=start)

    monkeypatch.setattr(syntax, "parser", lambda strict=False: Counting() if not strict else real)
    found = diagnostics_of(text)
    assert 1 < len(found) < syntax.MAX_SYNTAX_ERRORS  # without the budget: 20 full re-parses
    assert len(attempts) == len(found)


# --- which lines may be quoted ----------------------------------------------------------------

def test_a_file_that_is_not_a_spec_is_never_quoted(tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$s3cr3t:19000:0:99999:7:::\nbin:*:19000\n")
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.load(secret)
    text = str(e.value).replace(str(secret), "")
    assert "s3cr3t" not in text and "root" not in text
    assert e.value.diagnostics[0].line == 1  # still located


def test_a_dense_file_with_garbage_before_any_network_is_not_quoted(tmp_path):
    path = tmp_path / "x.dense"
    path.write_text("password hunter2\nnetwork n {\n}\n")
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.load(path)
    assert "hunter2" not in str(e.value) and "password" not in str(e.value)


def test_spec_files_are_quoted_at_syntax_and_value_errors(tmp_path):
    path = tmp_path / "notes.txt"  # the name does not matter, the content does
    path.write_text("# a comment\nnetwork n {\n    input 3x8x8\n    dense layers=6 grwoth=4 )\n}\n")
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.load(path)
    assert "    dense layers=6 grwoth=4 )" in str(e.value)
    path.write_text("network n {\n    input 3x8x8\n    dense layers=6 grwoth=4\n}\n")
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.load(path)
    assert "    dense layers=6 grwoth=4" in str(e.value) and "'grwoth'" in str(e.value)


def test_size_errors_quote_nothing(tmp_path):
    (diag,) = diagnostics_of(HEAD + "    foo bar=1\n" * 6000 + TAIL)
    assert str(diag).count("\n") == 1  # the message and the hint, no excerpt


def test_control_characters_never_reach_the_terminal():
    text = str(densedsl.SpecError(diagnostics_of(HEAD + "    dense layers=1 growth=4 \x1b]0;pwned\x07\n" + TAIL)))
    assert "\x1b" not in text and "\x07" not in text and "\ufffd" in text


def test_a_megabyte_name_is_cut_in_messages():
    (diag,) = diagnostics_of(HEAD + "    " + "a" * 1_000_000 + "\n" + TAIL)
    assert diag.code == "E101" and len(str(diag)) < 1500  # not 3 MB: message, excerpt and caret are cut


def test_long_lines_are_cut_around_the_caret():
    (diag,) = diagnostics_of(HEAD + " " * 5000 + "dense layers=1 grwoth=4" + " " * 5000 + "\n" + TAIL)
    line, caret = str(diag).splitlines()[1:3]
    assert len(line) < 300
    assert line[caret.index("^"):].startswith("grwoth")


# --- library API ------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda p: densedsl.parse(None), "str, not NoneType"),
    (lambda p: densedsl.parse(b"network n {}"), "not bytes"),
    (lambda p: densedsl.parse("network n {}", source=3), "not int"),
    (lambda p: densedsl.load(p, network=5), "not int"),
    (lambda p: load_all(p, network=5), "not int"),
    (lambda p: densedsl.load(None), "not NoneType"),
    (lambda p: densedsl.analyze(None), "not NoneType"),
    (lambda p: densedsl.analyze(densedsl.load(p), network=5), "not int"),
])
def test_wrong_argument_types_raise_a_clear_type_error(tmp_path, call, message):
    path = tmp_path / "n.dense"
    path.write_text(HEAD + "    dense layers=1 growth=4\n" + TAIL)
    with pytest.raises(TypeError, match=message):
        call(path)


@pytest.mark.parametrize("path, code", [
    ("a" * 5000 + ".dense", "E909"),       # ENAMETOOLONG
    (("a" * 200 + "/") * 30 + "x.dense", "E909"),
    ("a\x00b.dense", "E909"),
    ("missing.dense", "E901"),
])
def test_unusable_paths_are_spec_errors(path, code):
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.load(path)
    assert [x.code.code for x in e.value.diagnostics] == [code]
    assert "\x00" not in str(e.value)


@pytest.mark.parametrize("value, code", [
    (object(), "E104"),
    ([1], "E104"),
    (10**5000, "E006"),
    (Fraction(1, 10**500), "E006"),
    (float("nan"), "E105"),
    (float("inf"), "E105"),
    ("9" * 5000, "E005"),
    ("(" * 100 + "1" + ")" * 100, "E004"),
    ("1" + "+1" * 300, "E006"),
    ("x" * (2 * 1024 * 1024), "E006"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 10 else type(v).__name__)
def test_bad_override_values_are_spec_errors(value, code):
    assert codes("network n(depth=10) {\n    input 3x8x8\n    dense layers=depth growth=4\n}\n",
                 depth=value) == [code]


def test_override_accepts_any_rational_or_real_number():
    base = "network n(depth=10) {\n    input 3x8x8\n    dense layers=depth growth=4\n}\n"
    assert densedsl.parse(base, depth=Fraction(6)).network.stages[0].layers == 6
    assert densedsl.parse(base, depth=6.0).network.stages[0].layers == 6


# --- hostile texts, drawn -------------------------------------------------------------------------

_OPS = ["+", "-", "*", "/", "//", "%"]


@st.composite
def hostile_expressions(draw) -> str:
    kind = draw(st.sampled_from(["nested", "chain", "unary", "literal", "calls"]))
    if kind == "nested":
        depth = draw(st.integers(0, 100))
        return "(" * depth + "2" + ")" * depth
    if kind == "chain":
        ops = draw(st.lists(st.sampled_from(_OPS), max_size=400))
        terms = draw(st.sampled_from(["7", "1.5", "99999999999", "3e50"]))
        return terms + "".join(op + terms for op in ops)
    if kind == "unary":
        return draw(st.text(alphabet="+-", max_size=600)) + "1"
    if kind == "literal":
        digits = draw(st.integers(1, 600))
        exponent = draw(st.integers(-2000, 2000))
        return "9" * digits + (f"e{exponent}" if draw(st.booleans()) else "")
    depth = draw(st.integers(0, 80))
    return "max(" * depth + "4" + ")" * depth


@st.composite
def hostile_specs(draw) -> str:
    parts = []
    steps = draw(st.integers(0, 25))
    base = draw(st.sampled_from(["1.0001", "3/7", "12", "0.5"]))
    params = ", ".join([f"p0={base}"] + [f"p{i}=p{i - 1}*p{i - 1}" for i in range(1, steps + 1)])
    body = ["    input 3x8x8", f"    dense layers={draw(hostile_expressions())} growth=p{steps}"]
    body += draw(st.lists(st.sampled_from(["    foo", "    dense grwoth=1", "    ) (", "    input 3x",
                                           "    head classes=" + "9" * 500, "    dense layers=q growth=1"]),
                          max_size=120))
    parts.append(f"network n({params}) {{\n" + "\n".join(body) + "\n}\n")
    extra = draw(st.integers(0, 300))
    parts.extend(f"network m{i} {{ input 3x8x8; dense layers=1 growth=1 }}\n" for i in range(extra))
    return "".join(parts)


def _all_numbers(network) -> list[Fraction]:
    values = [Fraction(v) for _, v in network.parameters if isinstance(v, (int, float, Fraction))
              and not isinstance(v, bool)]
    values += [Fraction(e.value) for e in network.expectations]
    return values


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(hostile_specs())
@example(squaring_chain(40))
@example(spec_with("-" * 1000 + "1"))
@example(spec_with("+".join(["1"] * 600)))
def test_hostile_specs_end_in_spec_errors_with_bounded_work(text):
    source = Source.from_text(text, "hostile.dense")
    try:
        file = parse_source(source)
        for network in load_all_text(text):
            assert all(ast.fits(v) for v in _all_numbers(network))
        format_spec(file)
    except densedsl.SpecError as e:
        rendered = str(e)
        assert e.diagnostics
        assert rendered.count("error[") + rendered.count("warning[") <= d.MAX_SHOWN
        if len(e.diagnostics) > d.MAX_SHOWN:
            assert re.search(r"\.\.\. and \d+ more (errors|warnings)", rendered)
        # every number a message shows fits the bound too (no 5000-digit echo)
        assert all(len(run) <= ast.MAX_DIGITS for run in re.findall(r"\d+", rendered))


def load_all_text(text: str):
    from densedsl.language.resolve import resolve_all
    source = Source.from_text(text, "hostile.dense")
    return resolve_all(parse_source(source), None, source)


def test_a_long_comment_before_any_network_is_scanned_once():
    # a backtracking "does it open like a spec" regex took quadratic time on this
    (diag,) = diagnostics_of("#" * 200_000 + "\nroot:x:0:0\n")
    assert diag.code == "E001" and diag.line == 2 and "root" not in str(diag)
