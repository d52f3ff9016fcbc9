"""Resolution: defaults, parameters, arithmetic, repeat, value checks, network choice."""

from __future__ import annotations

from fractions import Fraction

import pytest
from conftest import SPECS

import densedsl
from densedsl import SpecError
from densedsl.language import network as n

BASE = """network n(depth=40, growth=12) {
    input 3x32x32
    defaults growth=growth bottleneck=4 compression=0.5
    %s
}
"""


def net(body: str, **params) -> n.Network:
    return densedsl.parse(BASE % body, **params).network


def errors(text: str, **params) -> list[tuple[str, int | None, str]]:
    with pytest.raises(SpecError) as e:
        densedsl.parse(text, **params)
    return [(d.code.code, d.line, d.message) for d in e.value.diagnostics]


def test_defaults_apply_and_settings_override_them():
    a, t, b = net("dense layers=6\n transition\n dense layers=4 growth=8 bottleneck=off").stages
    assert (a.layers, a.growth, a.bottleneck, a.order, a.bias, a.dropout) == (6, 12, 4, "pre", False, 0.0)
    assert t.compression == Fraction(1, 2) and t.channels is None
    assert t.pool == n.Pool(mode="avg", kernel=2, stride=2, padding=0)
    assert (b.growth, b.bottleneck) == (8, None)


def test_blocks_and_transitions_are_numbered_separately_from_one():
    stages = net("repeat 3 { dense layers=2; transition }").stages
    assert [(type(s).__name__, s.index) for s in stages] == [
        ("DenseBlock", 1), ("Transition", 1), ("DenseBlock", 2), ("Transition", 2),
        ("DenseBlock", 3), ("Transition", 3)]


def test_nested_repeat_and_repeat_zero():
    assert len(net("repeat 2 { repeat 3 { dense layers=1 } }").stages) == 6
    assert net("repeat depth-40 { dense layers=1 }").stages == ()


def test_parameter_arithmetic_is_exact():
    assert net("dense layers=(depth-4)/6").blocks[0].layers == 6
    assert net("dense layers=(depth-4)/6", depth=100).blocks[0].layers == 16
    assert net("dense layers=floor((depth-4)/7)").blocks[0].layers == 5
    assert net("dense layers=int(growth*0.5)").blocks[0].layers == 6
    assert net("dense layers=max(1, depth//100)").blocks[0].layers == 1
    # 0.1 is exactly one tenth: 30 channels at θ=0.1 are exactly 3, not 2.9999…
    t = net("transition compression=0.1").transitions[0]
    assert t.compression * 30 == 3


def test_parameter_defaults_may_use_earlier_parameters():
    spec = densedsl.parse("network n(k=12, stem=2*k) {\n input 3x8x8\n stem { conv stem }\n}\n", k=20)
    assert spec.network.stem.ops[0].out_channels == 40
    assert dict(spec.network.parameters) == {"k": 20, "stem": 40}


@pytest.mark.parametrize("value, expected", [
    (190, 190), ("190", 190), ("2*95", 190), (190.0, 190),
])
def test_overrides_from_python_and_cli_strings(value, expected):
    assert net("dense layers=(depth-4)/6", depth=value).blocks[0].layers == (expected - 4) // 6


def test_keyword_parameters():
    text = "network n(o=pre, b=true) {\n input 3x8x8\n dense layers=1 growth=1 order=o bias=b\n}\n"
    block = densedsl.parse(text, o="post", b="false").network.blocks[0]
    assert (block.order, block.bias) == ("post", False)
    assert densedsl.parse(text, b=True).network.blocks[0].bias is True


def test_non_integer_derived_value_is_an_error_with_its_derivation():
    (err,) = errors(BASE % "dense layers=(depth-4)/6", depth=101)
    assert err[0] == "E106" and err[1] == 4
    assert "(depth-4)/6 = 97/6 ≈ 16.17 with depth=101" in err[2]


def test_unknown_override_is_reported_with_did_you_mean():
    with pytest.raises(SpecError) as e:
        densedsl.parse(BASE % "dense layers=6", dpeth=3)
    (d,) = e.value.diagnostics
    assert d.code.code == "E107" and d.hint == "did you mean 'depth'?"


def test_every_independent_error_is_reported():
    text = BASE % ("dense layers=0 grwoth=3\n transition compression=2\n head classes=0 klasses=3\n"
                   " stemm {\n }")
    found = [(c, line) for c, line, _ in errors(text)]
    assert found == [("E105", 4), ("E102", 4), ("E105", 5), ("E105", 6), ("E102", 6), ("E101", 7)]


def test_growth_from_defaults_is_blamed_on_the_defaults_line():
    text = "network n {\n input 3x8x8\n defaults growth=0\n dense layers=2\n}\n"
    ((code, line, _),) = errors(text)
    assert (code, line) == ("E105", 3)


@pytest.mark.parametrize("body, code", [
    ("dense layers=6 growth=12 bottleneck=wide", "E104"),
    ("dense layers=6 growth=12 bottleneck=0", "E105"),
    ("dense layers=6 growth=12 dropout=-0.1", "E105"),
    ("transition channels=0", "E105"),
    ("transition kernel=2 padding=2", "E105"),
    ("transition compression=0", "E105"),
    ("head classes=10 stride=2", "E112"),
    ("head classes=10.5", "E106"),
    ("input 3x8", "E110"),
    ("stem { conv 3x3 }", "E104"),
    ("stem { dropout }", "E112"),
    ("stem { batchnorm }", "E101"),
    ("repeat 2 { head classes=3 }", "E113"),
    ("repeat 2.5 { dense layers=1 }", "E106"),
    ("repeat 100000 { dense layers=1 }", "E105"),
    ("repeat 1000 { repeat 1000 { dense layers=1 } }", "E304"),
    ("expect parameters=3", "E102"),
    ("expect params=3 params=4", "E103"),
    ("dense layers=6 growth=12 order=sideways", "E104"),
    ("dense layers=6 growth=12 bias=3", "E104"),
    ("dense layers=6 growth=12+true", "E104"),
    ("dense layers=6 growth=foo", "E108"),
    ("dense layers=6 growth=12/(depth-40)", "E111"),
    ("dense layers=6 growth=sqrt(4)", "E114"),
])
def test_value_errors(body, code):
    assert code in [c for c, _, _ in errors(BASE % body)]


def test_input_is_required_and_unique():
    assert [c for c, _, _ in errors("network n {\n}\n")] == ["E112"]
    assert [c for c, _, _ in errors("network n {\n input 3x8x8\n input 3x8x8\n}\n")] == ["E110"]


def test_network_choice():
    text = "network a {\n input 3x8x8\n}\nnetwork b {\n input 1x8x8\n}\n"
    assert densedsl.parse(text, network="b").network.input == (1, 8, 8)
    with pytest.raises(SpecError) as e:
        densedsl.parse(text)
    assert e.value.diagnostics[0].code.code == "E109"
    with pytest.raises(SpecError) as e:
        densedsl.parse(text, network="bb")
    assert e.value.diagnostics[0].hint == "did you mean 'b'?"


def test_expectations_carry_their_tolerance():
    e = net("expect params=7_978_856 flops=5.668G macs=2.8e9 depth=depth").expectations
    assert [(x.key, x.value, x.tolerance) for x in e] == [
        ("params", 7978856, 0), ("flops", 5668000000, 500000),
        ("macs", 2800000000, 50000000), ("depth", 40, 0)]


def test_expectations_about_the_defaults_are_dropped_when_parameters_change():
    body = "expect params=1000 depth=depth"
    assert [x.key for x in net(body).expectations] == ["params", "depth"]
    assert [x.key for x in net(body, depth=40).expectations] == ["params", "depth"]  # same values
    assert [(x.key, x.value) for x in net(body, depth=100).expectations] == [("depth", 100)]


def test_zoo_imagenet_structure():
    network = densedsl.load(SPECS / "densenet121.dense").network
    assert [b.layers for b in network.blocks] == [6, 12, 24, 16]
    assert {(b.growth, b.bottleneck) for b in network.blocks} == {(32, 4)}
    assert network.stem.ops[0] == n.Conv(out_channels=64, kernel=7, stride=2, padding=3, bias=False)
    assert network.stem.ops[3] == n.Pool(mode="max", kernel=3, stride=2, padding=1)
    assert network.head == n.Head(classes=1000)


@pytest.mark.parametrize("file, params, layers", [
    ("densenet_cifar", {}, 12), ("densenet_cifar", {"depth": 100}, 32),
    ("densenet_bc_cifar", {}, 16), ("densenet_bc_cifar", {"depth": 250, "growth": 24}, 41),
    ("densenet_bc_cifar", {"depth": 190, "growth": 40}, 31),
])
def test_zoo_cifar_rows_of_table_2(file, params, layers):
    network = densedsl.load(SPECS / f"{file}.dense", **params).network
    assert [b.layers for b in network.blocks] == [layers] * 3
    assert len(network.transitions) == 2


def test_keras_assignment_matches_the_seed():
    network = densedsl.load(SPECS / "keras_assignment.dense").network
    assert {b.growth for b in network.blocks} == {6}  # int(12 * 0.5)
    assert {t.channels for t in network.transitions} == {6}
    assert {b.dropout for b in network.blocks} == {0.2} == {t.dropout for t in network.transitions}
    assert network.head.window == (2, 2)
