"""The language features HarDNet's depthwise-separable members need (issue 22), each small and
general: `separable=true` dense layers (1x1 Conv-BN-act, depthwise Conv-BN), `groups=` on stem
convs, and `pool=depthwise` transitions (a depthwise Conv-BN on the pool's window)."""

from __future__ import annotations

from dataclasses import replace

import pytest

import densedsl
from densedsl.core.source import Source
from densedsl.ir import lowering
from densedsl.language import network as n
from densedsl.language.fmt import format_spec
from densedsl.language.syntax import parse_source
from densedsl.testing.printer import spec_text

from conftest import SPECS

SMALL = """network t {
    input 3x16x16
    defaults order=post activation=relu6 separable=true
    stem {
        conv 8 kernel=3 stride=2
        norm
        conv 8 kernel=3 stride=2 groups=8
        norm
    }
    dense layers=3 growth=4 links=harmonic emit=odd
    transition channels=6 order=post activation=relu6 pool=depthwise kernel=3 stride=2 padding=1
    dense layers=2 growth=4
    head classes=3
}
"""


def _ops(ops) -> list[tuple[str, str, int]]:
    """(name, kind, groups) of each op: what the recipe decides."""
    return [(op.name, op.kind, dict(op.attrs).get("groups", 1)) for op in ops]


def test_a_separable_layer_is_a_pointwise_conv_bn_act_then_a_depthwise_conv_bn():
    block = densedsl.parse(SMALL).network.blocks[0]
    ops = lowering.layer_ops(block, (12, 4, 4), None, 6)
    assert _ops(ops) == [("conv1", "conv", 1), ("norm1", "norm", 1), ("act1", "activation", 1),
                         ("conv2", "conv", 6), ("norm2", "norm", 1)]
    pointwise, depthwise = ops[0], ops[3]
    assert (pointwise.params, depthwise.params) == (12 * 6, 6 * 9)   # 1x1 over 12 inputs; 3x3 per channel
    assert (pointwise.macs, depthwise.macs) == (12 * 6 * 16, 6 * 9 * 16)
    assert ops[-1].out_shape == (6, 4, 4)


def test_a_separable_layer_takes_the_blocks_kernel_and_norm():
    block = replace(densedsl.parse(SMALL).network.blocks[0], kernel=5, norm="none")
    assert _ops(lowering.layer_ops(block, (12, 8, 8), None, 6)) == [
        ("conv1", "conv", 1), ("act1", "activation", 1), ("conv2", "conv", 6)]
    assert lowering.layer_ops(block, (12, 8, 8), None, 6)[-1].params == 6 * 25


def test_a_depthwise_transition_downsamples_with_a_depthwise_conv_and_bn():
    a = densedsl.analyze(densedsl.parse(SMALL))
    nodes = {name: attrs for name, attrs in a.arch.nodes.items() if name.startswith("transition1.")}
    assert [name.split(".")[1] for name in nodes] == ["conv", "norm", "act", "dwconv", "dwnorm"]
    dw = nodes["transition1.dwconv"]
    assert (dw["in_shape"], dw["out_shape"], dw["groups"], dw["params"]) == ((6, 4, 4), (6, 2, 2), 6, 6 * 9)
    assert "transition1.pool" not in a.arch.nodes


def test_a_grouped_stem_conv_is_depthwise():
    a = densedsl.analyze(densedsl.parse(SMALL))
    conv = a.arch.nodes["stem.conv1"]
    assert (conv["groups"], conv["params"], conv["out_shape"]) == (8, 8 * 9, (8, 4, 4))


def test_separable_is_inherited_and_a_block_may_turn_it_off():
    text = SMALL.replace("dense layers=2 growth=4", "dense layers=2 growth=4 separable=false")
    first, second = densedsl.parse(text).network.blocks
    assert (first.separable, second.separable) == (True, False)


def test_the_small_network_trains_a_step_and_counts_what_it_builds():
    torch = pytest.importorskip("torch")
    from densedsl.nn.build import build_model
    a = densedsl.analyze(densedsl.parse(SMALL))
    model = build_model(a.network)
    assert sum(p.numel() for p in model.parameters()) == a.params
    loss = model.train()(torch.randn(2, 3, 16, 16)).square().mean()
    loss.backward()
    depthwise = model.get_submodule("features.transition1.dwconv")
    assert depthwise.groups == 6 and depthwise.weight.grad is not None


def test_the_new_settings_format_to_themselves_and_round_trip_through_spec_text():
    formatted = format_spec(parse_source(Source.from_text(SMALL, "t.dense")))
    assert formatted == SMALL
    network = densedsl.parse(SMALL).network
    printed = spec_text(network)
    assert "separable=true" in printed and "groups=8" in printed and "pool=depthwise" in printed
    assert densedsl.parse(printed).network == network


@pytest.mark.parametrize("name", ["hardnet39ds", "hardnet68ds"])
def test_the_ds_specs_are_formatted_and_round_trip_through_spec_text(name):
    path = SPECS / f"{name}.dense"
    text = path.read_text("utf-8")
    assert format_spec(parse_source(Source.from_text(text, path.name))) == text
    network = densedsl.parse(text, str(path)).network
    printed = densedsl.parse(spec_text(network)).network
    assert (printed.stem, printed.stages, printed.head) == (network.stem, network.stages, network.head)


def _error(text: str) -> str:
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(text)
    return str(e.value)


def _net(dense: str = "dense layers=2 growth=4 order=post separable=true", stem: str = "",
         transition: str = "", input_: str = "3x16x16") -> str:
    stem = f"    stem {{\n        {stem}\n    }}\n" if stem else ""
    transition = f"    transition {transition}\n" if transition else ""
    return f"network t {{\n    input {input_}\n{stem}    {dense}\n{transition}    head classes=3\n}}\n"


@pytest.mark.parametrize("text, message", [
    (_net("dense layers=2 growth=4 separable=true"),
     "3:29: error[E116]: separable=true and order=pre exclude each other"),
    (_net("dense layers=2 growth=4 order=post bottleneck=4 separable=true"),
     "3:40: error[E116]: separable=true and bottleneck=4 exclude each other"),
    (_net("dense layers=2 growth=4 order=post groups=2 separable=true"),
     "3:40: error[E116]: separable=true and groups=2 exclude each other"),
    (_net("dense layers=2 growth=4 order=post separable=true", input_="16"),
     "error[E210]: separable=true splits a conv, and denseblock1's layers are linear"),
    (_net("dense layers=2 growth=4 order=post separable=3"),
     "error[E104]: separable must be true or false, got 3"),
    (_net(stem="conv 24 groups=2"), "4:17: error[E209]: conv groups=2 does not divide its input channels (3)"),
    (_net(stem="conv 24\n        conv 10 groups=4"),
     "error[E209]: conv groups=4 does not divide its output channels (10)"),
    (_net(stem="conv 24 groups=0"), "error[E105]: groups must be at least 1, got 0"),
    (_net(transition="pool=depthwise kernel=3 stride=2 padding=1 ceil=true"),
     "error[E116]: ceil=true rounds a pool's output up, and pool=depthwise is a conv"),
    (_net(transition="pool=depthwis"),
     "error[E104]: pool must be one of avg, max, depthwise, none, got 'depthwis'"),
])
def test_bad_values_are_located_errors(text, message):
    assert message in _error(text)


def test_a_stem_conv_before_the_input_statement_is_still_checked_against_the_input():
    text = "network t {\n    stem {\n        conv 24 groups=2\n    }\n    input 3x16x16\n    head classes=3\n}\n"
    assert "error[E209]: conv groups=2 does not divide its input channels (3)" in _error(text)


def test_an_invalid_stem_op_does_not_make_a_later_grouped_conv_wrong():
    """Past an op that failed to resolve the channels are unknown: no guessed E209."""
    text = _net(stem="conv 0\n        conv 8 groups=8")
    message = _error(text)
    assert "E209" not in message and "conv channels must be at least 1" in message


def test_the_stem_op_and_pool_docs_know_the_new_words():
    from densedsl.lsp import features
    assert features.enumerated_values("transition", "pool") == ("avg", "max", "depthwise", "none")
    assert features.enumerated_values("dense", "separable") == ("true", "false")
    assert "depthwise" in features.DOCS["pool"] and "separable" in features.DOCS
    assert n.Conv(out_channels=4).groups == 1
