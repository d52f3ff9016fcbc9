"""The language of DenseNet's relatives (issue 22): `links=`, `emit=`, `width_factor=` and
`widths=` on a dense block and in `defaults`, what each resolves to, the located errors of a bad
table, `fmt`, and what the editor tooling knows of them."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
from lsprotocol import types

import densedsl
from densedsl.core.source import Source
from densedsl.language import network as n
from densedsl.language import resolve
from densedsl.language.fmt import format_spec
from densedsl.language.links import problems, validate
from densedsl.language.syntax import parse_source

ROOT = Path(__file__).resolve().parent.parent


def block(settings: str, layers: int = 4, head: str = "", params: str = "", **overrides) -> n.DenseBlock:
    spec = densedsl.parse(_spec(settings, layers, head, params), **overrides)
    return spec.network.blocks[0]


def _spec(settings: str, layers: int = 4, head: str = "", params: str = "") -> str:
    return (f"network n{params} {{\n    input 3x32x32\n{head}    dense layers={layers} growth=12 {settings}\n"
            "    head classes=10\n}\n")


def errors(settings: str, layers: int = 4, head: str = "") -> list[tuple[str, int, int, str]]:
    """(code, where in `settings` the caret starts, its width, the text it points at) of each
    diagnostic."""
    text = _spec(settings, layers, head)
    at = text.index(settings)
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(text)
    out = []
    for x in e.value.diagnostics:
        assert x.span is not None, x
        out.append((x.code.code, x.span.start - at, x.span.end - x.span.start, text[x.span.start:x.span.end]))
    return out


# --- what each syntax resolves to ---------------------------------------------------------------

@pytest.mark.parametrize("settings, field, value", [
    ("", "links", "all"),
    ("links=all", "links", "all"),
    ("links=log", "links", "log"),
    ("links=harmonic", "links", "harmonic"),
    ("links=chain", "links", "chain"),
    ("links=random(0.5, 3)", "links", n.RandomLinks(p=Fraction(1, 2), seed=3)),
    ("links=random(1, 0)", "links", n.RandomLinks(p=Fraction(1), seed=0)),
    ("links=random(1/3, 2*2)", "links", n.RandomLinks(p=Fraction(1, 3), seed=4)),
    ("links=[[0], [1, 0], [2], [3, 2, 0]]", "links", ((0,), (1, 0), (2,), (3, 2, 0))),
    ("", "emit", "all"),
    ("emit=log", "emit", "log"),
    ("emit=odd", "emit", "odd"),
    ("emit=[1, 3, 4]", "emit", (1, 3, 4)),
    ("emit=[4, 0]", "emit", (4, 0)),
    ("", "width_factor", None),
    ("width_factor=1.7", "width_factor", 1.7),
    ("width_factor=17/10", "width_factor", 1.7),
    ("", "widths", None),
    ("widths=[14, 24, 14, 40]", "widths", (14, 24, 14, 40)),
])
def test_each_syntax_resolves_to_its_field(settings, field, value):
    got = getattr(block(settings), field)
    assert got == value and type(got) is type(value)


def test_random_keeps_p_exact():
    links = block("links=random(0.3, 7)").links
    assert isinstance(links, n.RandomLinks) and links.p == Fraction(3, 10) and type(links.p) is Fraction


def test_defaults_give_every_block_its_connectivity():
    spec = densedsl.parse("network n {\n    input 3x32x32\n    defaults links=harmonic emit=odd width_factor=1.6\n"
                          "    dense layers=4 growth=12\n    transition\n    dense layers=8 growth=12 links=log\n"
                          "    head classes=10\n}\n")
    first, second = spec.network.blocks
    assert (first.links, first.emit, first.width_factor) == ("harmonic", "odd", 1.6)
    assert (second.links, second.emit, second.width_factor) == ("log", "odd", 1.6)


def test_widths_on_a_block_replace_an_inherited_width_factor():
    spec = densedsl.parse("network n {\n    input 3x32x32\n    defaults width_factor=1.7\n"
                          "    dense layers=2 growth=12 widths=[8, 16]\n    head classes=10\n}\n")
    assert (spec.network.blocks[0].widths, spec.network.blocks[0].width_factor) == ((8, 16), None)


def test_links_from_parameters_python_and_set():
    assert block("links=rule", params="(rule=log)").links == "log"
    assert block("links=rule", params="(rule=log)", rule="harmonic").links == "harmonic"
    assert block("emit=e", params="(e=[1, 2])", e=[3, 4]).emit == (3, 4)
    assert block("emit=e", params="(e=odd)", e="log").emit == "log"
    # a row may be a parameter holding a flat list
    assert block("links=[first, [1, 0]]", layers=2, params="(first=[0])").links == ((0,), (1, 0))


def test_the_table_resolved_is_the_table_the_lowering_expands():
    from densedsl.ir.connectivity import table
    b = block("links=[[0], [1, 0], [2], [3, 2, 0]] emit=[1, 3, 4] widths=[14, 24, 14, 40]")
    t = table(b)
    assert (t.reads, t.emits, t.widths) == (((0,), (1, 0), (2,), (3, 2, 0)), (1, 3, 4), (14, 24, 14, 40))


# --- located errors -------------------------------------------------------------------------------

def test_an_index_that_is_not_an_earlier_output_points_at_the_element():
    assert errors("links=[[0], [1, 0], [3, 1], [0]]") == [("E119", 21, 1, "3")]
    assert errors("links=[[0], [-1], [2], [3]]") == [("E119", 13, 2, "-1")]
    assert errors("emit=[1, 5]") == [("E119", 9, 1, "5")]


def test_a_layer_with_no_input_and_an_empty_emit():
    assert errors("links=[[0], [], [2], [3]]") == [("E120", 12, 2, "[]")]
    assert errors("emit=[]") == [("E120", 5, 2, "[]")]


def test_duplicate_indexes_point_at_the_second():
    assert errors("links=[[0], [1, 1], [2], [3]]") == [("E121", 16, 1, "1")]
    assert errors("emit=[1, 3, 3]") == [("E121", 12, 1, "3")]


def test_a_table_of_the_wrong_length():
    assert errors("links=[[0], [1]]") == [("E122", 6, 10, "[[0], [1]]")]
    assert errors("widths=[14, 24]") == [("E122", 7, 8, "[14, 24]")]


def test_every_problem_of_a_table_is_reported_at_once():
    assert [x[0] for x in errors("links=[[0], [5], [], [3, 3]] emit=[]")] == ["E119", "E120", "E121", "E120"]


def test_a_bad_table_in_defaults_points_at_the_defaults_line():
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse("network n {\n    input 3x32x32\n    defaults links=[[0], [2]]\n"
                       "    dense layers=2 growth=12\n    transition\n    dense layers=2 growth=6\n"
                       "    head classes=10\n}\n")
    [x] = e.value.diagnostics  # once, though both blocks inherit it
    assert (x.code, x.line, x.column) == ("E119", 3, len("    defaults links=[[0], [") + 1)


@pytest.mark.parametrize("settings, code, pointed", [
    ("links=random(0, 1)", "E105", "0"),
    ("links=random(1.5, 1)", "E105", "1.5"),
    ("links=random(0.5, -1)", "E105", "-1"),
    ("links=random(0.5, 1.5)", "E106", "1.5"),
    ("links=random(0.5)", "E114", "random(0.5)"),
    ("width_factor=0", "E105", "0"),
    ("width_factor=-1.5", "E105", "-1.5"),
    ("widths=[14, 0, 14, 40]", "E105", "0"),
    ("widths=[14, 2.5, 14, 40]", "E105", "2.5"),
    ("widths=14", "E104", "14"),
    ("widths=[1, 2, 3, 4] width_factor=1.7", "E116", "[1, 2, 3, 4]"),
    ("links=lgo", "E104", "lgo"),
    ("links=[0, 1]", "E104", "0"),
    ("links=[[[0]], [1]]", "E104", "[0]"),
    ("emit=even", "E104", "even"),
    ("emit=[1, half]", "E104", "half"),
    ("links=[[0], [0.5], [2], [3]]", "E106", "0.5"),
])
def test_bad_values_are_located(settings, code, pointed):
    [(got, _, _, text)] = errors(settings)
    assert (got, text) == (code, pointed)


def test_both_arguments_of_random_are_checked_in_one_run():
    assert [x[3] for x in errors("links=random(2, -1)")] == ["2", "-1"]


def test_random_is_a_links_value_only():
    [(code, _, _, text)] = errors("bottleneck=random(1, 2)")
    assert (code, text) == ("E114", "random(1, 2)")
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(_spec("links=random(0.5, 1)").replace("growth=12", "growth=random(1, 2)"))
    assert "links value" in str(e.value)


def test_a_did_you_mean_for_a_misspelt_rule():
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(_spec("links=harmonc emit=od"))
    assert [x.hint for x in e.value.diagnostics] == ["did you mean 'harmonic'?", "did you mean 'odd'?"]


def test_validate_states_the_table_rules():
    assert validate(((0,), (1, 0)), (0, 1, 2), 2) == []
    assert validate(((0,), ()), None, 2) == [("layer 2 reads nothing", 2)]
    assert validate(((0,),), None, 2) == [("links lists 1 layer for a block of 2", None)]
    assert [p.kind for p in problems(((0,), (2, 0, 0)), (3, 1, 1), 2)] == ["not-earlier", "duplicate",
                                                                          "not-earlier", "duplicate"]
    assert [(p.layer, p.item, p.emit) for p in problems(((0,), (1, 1)), (), 2)] == [(2, 1, False),
                                                                                  (None, None, True)]


# --- fmt ------------------------------------------------------------------------------------------

CONNECTED = """network  relatives(rule = log, t=[0]) {
  input 3x32x32
  defaults links = harmonic   emit=odd  width_factor = 1.7  # HarDNet
  dense layers=4 growth=12 links=[ [0] , [1,0],[2], [ 3 , 2 , 0 ] ]  emit=[ 1,3, 4 ]
  # a random one
  dense layers=4 growth=12 links = random( 1/2 , 3 ) widths = [14,24 ,14, 40]
  dense layers=2 growth=12 links=[t, [1]] emit=all
  dense layers=4 growth=12 links=rule emit=log  # SparseNet
  head classes=10
}
"""


def _fmt(text: str) -> str:
    return format_spec(parse_source(Source.from_text(text, "t.dense")))


def test_fmt_round_trips_the_connectivity_settings():
    once = _fmt(CONNECTED)
    assert once == _fmt(once)
    assert parse_source(Source.from_text(once, "t.dense")) == parse_source(Source.from_text(CONNECTED, "t.dense"))
    assert "links=[[0], [1, 0], [2], [3, 2, 0]] emit=[1, 3, 4]" in once
    assert "links=random(1/2, 3) widths=[14, 24, 14, 40]" in once
    assert "defaults links=harmonic emit=odd width_factor=1.7  # HarDNet" in once
    assert "    # a random one\n" in once and "emit=log  # SparseNet" in once
    assert densedsl.parse(once).network == densedsl.parse(CONNECTED).network


# --- the editor tooling ---------------------------------------------------------------------------

def test_completion_offers_the_settings_and_their_values():
    from densedsl.lsp import features
    from densedsl.lsp.document import analyze_text

    def labels(text: str) -> set[str]:
        snap = analyze_text(text, "c.dense")
        pos = features.Positions(snap.source, len)
        line = text.count("\n", 0, text.index("@"))
        column = len(text.split("\n")[line].split("@")[0])
        snap = analyze_text(text.replace("@", ""), "c.dense")
        pos = features.Positions(snap.source, len)
        return {x.label for x in features.completion(snap, pos, types.Position(line=line, character=column))}

    dense = "network n {\n    input 3x32x32\n    dense layers=4 growth=12 @\n    head classes=10\n}\n"
    assert {"links", "emit", "width_factor", "widths"} <= labels(dense)
    assert {"links", "emit", "width_factor", "widths"} <= labels(dense.replace("dense layers=4 growth=12", "defaults"))
    assert labels(dense.replace("@", "links=@")) >= {"all", "log", "harmonic", "chain", "random"}
    emit = labels(dense.replace("@", "emit=@"))
    assert emit >= {"all", "log", "odd"} and "random" not in emit


def test_hover_shows_the_resolved_connectivity():
    from densedsl.lsp import features
    from densedsl.lsp.document import analyze_text
    text = _spec("links=[[0], [0, 1]] emit=[2, 0]", layers=2)
    snap = analyze_text(text, "h.dense")
    pos = features.Positions(snap.source, len)
    hover = features.hover(snap, pos, types.Position(line=2, character=6))
    # as the spec writes them, so the resolved value adds no `→ …`
    assert hover is not None and "`links=[[0], [0, 1]]` · `emit=[2, 0]`" in hover.contents.value
    random = _spec("links=random(0.25, 3)", layers=2)
    snap = analyze_text(random, "h.dense")
    hover = features.hover(snap, features.Positions(snap.source, len), types.Position(line=2, character=6))
    assert hover is not None and "`links=random(0.25, 3)`" in hover.contents.value
    assert "`links=random(0.25, 3)` →" not in hover.contents.value
    assert features.DOCS["links"].startswith("which earlier outputs") and "random" in features.FUNCTION_DOCS


def test_the_grammar_colours_the_rules_and_random():
    import re
    grammar = json.loads((ROOT / "grammars" / "densedsl.tmLanguage.json").read_text())
    patterns = grammar["repository"]["value"]["patterns"]
    [constants] = [p["match"] for p in patterns if p.get("name") == "constant.language.densedsl"]
    words = set(re.search(r"\(([a-z_0-9|]+)\)", constants).group(1).split("|"))
    assert set(resolve.LINK_RULES) | set(resolve.EMIT_RULES) <= words
    [links_call] = [p for p in patterns if "support.function.links.densedsl" in json.dumps(p)]
    assert re.search(links_call["match"], "random(0.5, 1)") and not re.search(links_call["match"], "random")
