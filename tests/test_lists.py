"""Lists, `for … between`, indexing, len(), input shapes as expressions, and the family spec."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings

import densedsl
from densedsl.analysis.figures import analyze
from densedsl.core import diagnostics as d
from densedsl.core.source import Source
from densedsl.language.fmt import format_spec
from densedsl.language.syntax import parse_source
from densedsl.testing.strategies import family_texts

FAMILY = ROOT / "specs" / "densenet.dense"
# torchvision's num_params (densenet121/161/169/201); 264 as specs/densenet264.dense states it
FAMILY_COUNTS = {
    "121": ({}, 7_978_856),
    "161": ({"growth": "48", "init": "96", "blocks": "6,12,36,24"}, 28_681_000),
    "169": ({"blocks": "6,12,32,32"}, 14_149_480),
    "201": ({"blocks": "6,12,48,32"}, 20_013_928),
    "264": ({"blocks": "6,12,64,48"}, 33_337_704),
}


def network_of(text: str, **params):
    return densedsl.parse(text, **params).network


def diagnostics_of(text: str, **params) -> tuple[d.Diagnostic, ...]:
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(text, **params)
    return e.value.diagnostics


def snippet(diag: d.Diagnostic) -> str:
    return diag.span.source.text[diag.span.start:diag.span.end]


def spec(body: str, params: str = "blocks=[2, 3], rates=[4, 8], size=8") -> str:
    return f"network n({params}) {{\n    input 3 x size x size\n{body}\n}}\n"


# --- the family spec ----------------------------------------------------------------------------

@pytest.mark.parametrize("member", FAMILY_COUNTS)
def test_each_family_member_has_torchvisions_parameter_count(member):
    overrides, params = FAMILY_COUNTS[member]
    assert analyze(densedsl.load(FAMILY, **overrides).network).params == params


def test_python_lists_give_the_same_members_as_set_strings():
    as_list = densedsl.load(FAMILY, blocks=[6, 12, 32, 32]).network
    assert as_list == densedsl.load(FAMILY, blocks="6,12,32,32").network
    assert as_list == densedsl.load(FAMILY, blocks="[6, 12, 32, 32]").network
    assert dict(as_list.parameters)["blocks"] == (6, 12, 32, 32)


def test_the_family_defaults_are_densenet121_and_its_expectations_hold():
    family = densedsl.load(FAMILY).network
    zoo = densedsl.load(ROOT / "specs" / "densenet121.dense").network
    assert family.stages == zoo.stages and family.stem == zoo.stem and family.head == zoo.head
    assert {e.key for e in family.expectations} == {"params", "flops", "depth", "connections", "channels"}
    assert not analyze(family).diagnostics


def test_size_and_classes_set_the_input_and_the_outputs():
    a = analyze(densedsl.load(FAMILY, size=160, classes=37).network)
    assert a.network.input == (3, 160, 160)
    assert tuple(a.output_shape) == (37,)


def test_the_header_comment_gives_each_members_set():
    header = FAMILY.read_text("utf-8").split("network", 1)[0]
    for member, (overrides, params) in FAMILY_COUNTS.items():
        if overrides:
            line = next(x for x in header.splitlines() if f"DenseNet-{member}" in x)
            assert " ".join(f"{k}={v}" for k, v in overrides.items()) in line
            assert f"{params:,}" in line


# --- for … between ------------------------------------------------------------------------------

def test_between_goes_between_elements_and_not_after_the_last():
    net = network_of(spec("    for i, n in blocks {\n        dense layers=n growth=rates[i]\n"
                          "    } between {\n        transition compression=0.5\n    }"))
    kinds = [type(s).__name__ for s in net.stages]
    assert kinds == ["DenseBlock", "Transition", "DenseBlock"]
    assert [(b.layers, b.growth) for b in net.blocks] == [(2, 4), (3, 8)]
    assert [t.index for t in net.transitions] == [1]


def test_a_loop_without_between_and_one_variable():
    net = network_of(spec("    for n in blocks { dense layers=n growth=2 }"))
    assert [(b.index, b.layers) for b in net.blocks] == [(1, 2), (2, 3)]
    assert not net.transitions


def test_loop_variables_are_not_parameters_of_the_network():
    net = network_of(spec("    for i, n in blocks { dense layers=n growth=rates[i] }"))
    assert [k for k, _ in net.parameters] == ["blocks", "rates", "size"]


def test_nested_loops_and_repeat_inside_a_loop():
    net = network_of(spec("    for n in blocks {\n        for g in rates { dense layers=n growth=g }\n"
                          "        repeat 2 { transition kernel=1 }\n    }"))
    assert [(b.layers, b.growth) for b in net.blocks] == [(2, 4), (2, 8), (3, 4), (3, 8)]
    assert len(net.transitions) == 4


def test_len_sum_min_max_and_keyword_lists():
    net = network_of(spec("    dense layers=len(blocks)+sum(blocks) growth=max(rates)-min(rates)\n"
                          "    for i, o in orders { dense layers=1 growth=2 order=o bias=[yes, no][i] }",
                          "blocks=[2, 3], rates=[4, 8], orders=[pre, post], size=8"))
    assert [(b.layers, b.growth) for b in net.blocks[:1]] == [(7, 4)]
    assert [(b.order, b.bias) for b in net.blocks[1:]] == [("pre", True), ("post", False)]


def test_input_dimensions_as_expressions_and_as_a_shape():
    assert network_of(spec("    dense layers=1 growth=2", "size=8")).input == (3, 8, 8)
    assert network_of("network n(c=2) {\n    input c x 2*c\n    dense layers=1 growth=2\n}\n").input == (2, 4)
    assert network_of("network n {\n    input 3x224x224\n    dense layers=1 growth=2\n}\n").input == (3, 224, 224)


def test_x_stays_an_ordinary_name_outside_input_shapes():
    net = network_of("network n(x=3) {\n    input 3x8x8\n    dense layers=x growth=x*x\n}\n")
    assert (net.blocks[0].layers, net.blocks[0].growth) == (3, 9)


# --- fmt ----------------------------------------------------------------------------------------

def test_fmt_round_trips_the_new_constructs():
    text = ("network n(blocks=[2,3,], rates=[4, 8], size=8) {\n  input 3 x size x 2*size # shape\n"
            "  # loop\n  for i,n in blocks { dense layers=n growth=rates[i]*(1+1)+(-rates[0])\n  }"
            " between {transition\n}\n  dense layers=len(blocks) growth=[1, 2][1]\n}\n")
    formatted = format_spec(parse_source(Source.from_text(text)))
    assert formatted == (
        "network n(blocks=[2, 3], rates=[4, 8], size=8) {\n"
        "    input 3 x size x 2*size  # shape\n"
        "    # loop\n"
        "    for i, n in blocks {\n"
        "        dense layers=n growth=rates[i]*(1+1)+(-rates[0])\n"
        "    } between {\n"
        "        transition\n"
        "    }\n"
        "    dense layers=len(blocks) growth=[1, 2][1]\n"
        "}\n")
    again = parse_source(Source.from_text(formatted))
    assert again == parse_source(Source.from_text(text))
    assert format_spec(again) == formatted
    assert densedsl.parse(formatted).network == densedsl.parse(text).network


def test_fmt_keeps_the_family_spec_as_it_is():
    text = FAMILY.read_text("utf-8")
    assert format_spec(parse_source(Source.from_text(text))) == text


# --- diagnostics --------------------------------------------------------------------------------

def test_a_list_where_a_number_is_needed():
    (diag,) = diagnostics_of(spec("    dense layers=blocks growth=2"))
    assert diag.code is d.WRONG_TYPE and snippet(diag) == "blocks"
    assert "the list [2, 3]" in diag.message and "blocks[0]" in diag.hint and "for n in" in diag.hint
    (diag,) = diagnostics_of(spec("    dense layers=1+blocks growth=2"))
    assert diag.code is d.WRONG_TYPE and snippet(diag) == "blocks"


def test_an_index_out_of_range():
    (diag,) = diagnostics_of(spec("    dense layers=blocks[2] growth=2"))
    assert diag.code is d.OUT_OF_RANGE and snippet(diag) == "blocks[2]"
    assert "2 elements (indices 0 to 1)" in diag.message and "count from 0" in diag.hint
    (diag,) = diagnostics_of(spec("    dense layers=blocks[-1] growth=2"))
    assert diag.code is d.OUT_OF_RANGE
    (diag,) = diagnostics_of(spec("    dense layers=blocks[1/2] growth=2"))
    assert diag.code is d.NOT_INTEGER


def test_for_over_a_non_list():
    (diag,) = diagnostics_of(spec("    for n in size { dense layers=n growth=2 }"))
    assert diag.code is d.WRONG_TYPE and snippet(diag) == "size"
    assert "for walks a list" in diag.message and "repeat" in diag.hint


def test_indexing_a_number_and_len_of_a_number():
    (diag,) = diagnostics_of(spec("    dense layers=size[0] growth=2"))
    assert diag.code is d.WRONG_TYPE and "indexing needs a list" in diag.message
    (diag,) = diagnostics_of(spec("    dense layers=len(size) growth=2"))
    assert diag.code is d.WRONG_TYPE and snippet(diag) == "size"


def test_lists_do_not_nest():
    (diag,) = diagnostics_of(spec("    dense layers=[[1]][0] growth=2"))
    assert diag.code is d.WRONG_TYPE and snippet(diag) == "[1]"
    (diag,) = diagnostics_of(spec("    dense layers=1 growth=2", "b=1, size=8"), b=[[1], [2]])
    assert diag.code is d.WRONG_TYPE


def test_a_loop_variable_may_not_hide_a_parameter():
    (diag,) = diagnostics_of(spec("    for size in blocks { dense layers=size growth=2 }"))
    assert diag.code is d.DUPLICATE_DEFINITION and snippet(diag) == "size"


def test_a_mistake_in_a_loop_body_is_reported_once():
    diags = diagnostics_of(spec("    for n in blocks { dense layers=n growth=rtaes }"))
    assert [x.code for x in diags] == [d.UNKNOWN_NAME]
    assert diags[0].hint == "did you mean 'rates'?"


def test_statements_that_cannot_sit_in_a_loop():
    (diag,) = diagnostics_of(spec("    for n in blocks { head classes=2 }\n    dense layers=1 growth=2"))
    assert diag.code is d.MISPLACED and "inside for" in diag.message


def test_a_wrong_input_dimension_is_located():
    diag, _ = diagnostics_of(spec("    dense layers=1 growth=2", "size=0"))  # height and width
    assert diag.code is d.OUT_OF_RANGE and snippet(diag) == "size" and "input height" in diag.message


# --- hostile-input limits, extended to lists ----------------------------------------------------

def test_a_list_from_python_or_set_is_capped():
    from densedsl.language.resolve import MAX_LIST
    text = spec("    dense layers=1 growth=2", "b=[1], size=8")
    assert densedsl.parse(text, b=[1] * MAX_LIST).network
    (diag,) = diagnostics_of(text, b=[1] * (MAX_LIST + 1))
    assert diag.code is d.TOO_COMPLEX
    (diag,) = diagnostics_of(text, b=",".join(["1"] * (MAX_LIST + 1)))
    assert diag.code is d.TOO_COMPLEX


def test_a_list_literal_counts_against_the_expression_cap():
    from densedsl.language.syntax import MAX_OPERATORS
    items = ", ".join(["1"] * (MAX_OPERATORS + 1))
    diags = diagnostics_of(spec("    dense layers=1 growth=2", f"b=[{items}]"))
    assert [x.code for x in diags] == [d.TOO_COMPLEX]


def test_a_loop_cannot_unroll_past_the_stage_cap():
    big = ", ".join(["1"] * 100)
    text = spec("    for a in b {\n        for c in b { dense layers=1 growth=1 }\n    }", f"b=[{big}], size=8")
    diags = diagnostics_of(text)
    assert [x.code for x in diags] == [d.TOO_LARGE]


def test_a_set_value_with_a_call_is_not_a_list():
    net = densedsl.parse(spec("    dense layers=b growth=2", "b=1, size=8"), b="max(1, 2)").network
    assert net.blocks[0].layers == 2


# --- generated networks written as families -----------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family_texts(ranks=(1, 2, 3)))
def test_generated_families_resolve_to_the_network_and_survive_fmt(drawn):
    network, text = drawn
    assert "for i, n in layers" in text
    resolved = densedsl.parse(text).network
    assert dataclasses.replace(resolved, parameters=()) == network
    formatted = format_spec(parse_source(Source.from_text(text)))
    assert format_spec(parse_source(Source.from_text(formatted))) == formatted
    assert densedsl.parse(formatted).network == resolved


def test_a_sweep_grid_takes_lists_as_points():
    from densedsl.views.report import parse_grid
    grid = parse_grid(["blocks=[6,12,24,16],[6,12,32,32]", "growth=32,48", "n=max(1,2),3"])
    assert grid == {"blocks": ["[6,12,24,16]", "[6,12,32,32]"], "growth": ["32", "48"], "n": ["max(1,2)", "3"]}


def test_nested_loops_are_bounded_by_their_steps_not_only_by_their_stages():
    """Empty nested loops make no stage, so only the step cap stops 150**6 iterations; and a
    loop past the stage cap stops the unrolling at once instead of retrying every outer element."""
    from densedsl.language.resolve.vocabulary import _MAX_LOOP_STEPS
    big = ", ".join(["1"] * 150)
    nested = "".join(f"for a{i} in b {{ " for i in range(6)) + "}" * 6
    diags = diagnostics_of(spec(f"    {nested}\n    dense layers=1 growth=1", f"b=[{big}], size=8"))
    assert [x.code for x in diags] == [d.TOO_COMPLEX] and f"{_MAX_LOOP_STEPS:,}" in diags[0].message
    grow = "".join(f"for a{i} in b {{ " for i in range(12)) + "dense layers=1 growth=1 " + "}" * 12
    diags = diagnostics_of(spec(f"    {grow}", "b=[1, 1], size=8"))
    assert [x.code for x in diags] == [d.TOO_LARGE]


def test_an_x_after_a_value_explains_itself():
    (diag,) = diagnostics_of("network n {\n    input 3x8x8\n    dense layers=3 x=1 growth=2\n}\n")
    assert diag.code is d.SYNTAX and "separates dimensions (input 3 x size x size" in diag.hint
