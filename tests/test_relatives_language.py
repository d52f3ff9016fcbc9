"""The language features DenseNet's relatives need (issue 22), each small and general:
post-activation transitions with any activation (HarDNet's 1x1 Conv-BN-ReLU6, VoVNet's
aggregation) and a `relu6` stem op (HarDNet's stem)."""

from __future__ import annotations

import pytest

import densedsl
from densedsl.core.source import Source
from densedsl.language import network as n
from densedsl.language.fmt import format_spec
from densedsl.language.syntax import parse_source


def _net(transition: str, stem: str = "conv 8\n        norm\n        relu", defaults: str = "") -> str:
    return f"""network t {{
    input 3x16x16
    {defaults}
    stem {{
        {stem}
    }}
    dense layers=2 growth=4
    transition {transition}
    dense layers=2 growth=4
    head classes=3
}}
"""


def _transition(text: str) -> n.Transition:
    return densedsl.parse(text).network.transitions[0]


def _kinds(text: str, stage: str) -> list[tuple[str, str]]:
    a = densedsl.analyze(densedsl.parse(text))
    prefix = f"{stage}."
    return [(name[len(prefix):], attrs["kind"]) for name, attrs in a.arch.nodes.items() if name.startswith(prefix)]


def test_post_transition_runs_conv_norm_activation_then_pool():
    text = _net("channels=6 order=post activation=relu6 pool=max kernel=2 stride=2")
    t = _transition(text)
    assert (t.order, t.activation) == ("post", "relu6")
    assert _kinds(text, "transition1") == [("conv", "conv"), ("norm", "norm"), ("act", "activation"),
                                           ("pool", "pool")]


def test_a_transition_is_pre_activation_relu_by_default_and_ignores_defaults_order():
    """`defaults order=post` makes post-activation dense layers; DenseNet's transitions stay
    BN-ReLU-Conv (so every existing spec keeps its transitions)."""
    text = _net("compression=0.5", defaults="defaults order=post")
    t = _transition(text)
    assert (t.order, t.activation) == ("pre", "relu")
    assert _kinds(text, "transition1") == [("norm", "norm"), ("relu", "relu"), ("conv", "conv"), ("pool", "pool")]


def test_post_transition_counts_its_norm_on_the_output_channels():
    """BN after the conv normalises the transition's output (6 channels), not its input (16)."""
    pre = densedsl.analyze(densedsl.parse(_net("channels=6")))
    post = densedsl.analyze(densedsl.parse(_net("channels=6 order=post")))
    assert pre.params - post.params == 2 * (16 - 6)


def test_a_bad_transition_activation_is_an_error_with_a_location():
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(_net("channels=6 order=post activation=relu7"))
    assert str(e.value).startswith("<string>:10:49: error[E104]: activation must be one of relu, relu6")


def test_relu6_stem_op_lowers_to_relu6():
    text = _net("channels=6", stem="conv 8 kernel=3 stride=2\n        norm\n        relu6")
    stem = densedsl.parse(text).network.stem
    assert stem.ops[-1] == n.Activation(fn="relu6")
    assert ("act0", "activation") in _kinds(text, "stem")


@pytest.mark.parametrize("text", [
    _net("channels=6 order=post activation=relu6 pool=none"),
    _net("channels=6", stem="conv 8\n        norm\n        relu6"),
])
def test_new_syntax_formats_to_itself_and_resolves_the_same(text):
    formatted = format_spec(parse_source(Source.from_text(text, "t.dense")))
    assert densedsl.parse(formatted).network == densedsl.parse(text).network
    assert format_spec(parse_source(Source.from_text(formatted, "t.dense"))) == formatted



def _ceil_net(size: int, where: str) -> str:
    stem_pool = "maxpool kernel=3 stride=2 ceil=true" if where == "stem" else "relu"
    t_pool = "pool=max kernel=3 stride=2 ceil=true" if where == "transition" else "pool=none"
    return f"""network t {{
    input 3x{size}x{size}
    stem {{
        conv 8
        norm
        {stem_pool}
    }}
    dense layers=2 growth=4
    transition channels=6 order=post {t_pool}
    head classes=3
}}
"""


@pytest.mark.parametrize("where", ["stem", "transition"])
@pytest.mark.parametrize("size", [6, 7, 8, 56, 57])
def test_a_ceil_pool_rounds_sizes_up_and_drops_nothing(size, where):
    """ceil_mode keeps the last, partial window: 56 → 28 (floor mode: 27, and the last row
    unread, which `check` would report as W-uneven)."""
    a = densedsl.analyze(densedsl.parse(_ceil_net(size, where)))
    node = "stem.pool0" if where == "stem" else "transition1.pool"
    out = a.arch.nodes[node]["out_shape"][1]
    assert out == -(-(size - 3) // 2) + 1
    assert not [x for x in a.diagnostics if "drops the last" in x.message]


def test_ceil_on_a_poolless_transition_is_a_conflict():
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(_net("channels=6 pool=none ceil=true"))
    assert "error[E116]: 'ceil' sets the pooling window, and this transition has pool=none" in str(e.value)


@pytest.mark.parametrize("text", [_ceil_net(9, "stem"), _ceil_net(9, "transition")])
def test_ceil_formats_to_itself_and_round_trips_through_spec_text(text):
    from densedsl.testing.strategies import spec_text
    formatted = format_spec(parse_source(Source.from_text(text, "t.dense")))
    network = densedsl.parse(text).network
    assert densedsl.parse(formatted).network == network
    assert densedsl.parse(spec_text(network)).network == network


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("transition", [
    "channels=6 order=post pool=avg",                      # the engine may not pool first here
    "channels=6 order=post activation=relu6 pool=max kernel=2 stride=2",
    "compression=0.5 activation=relu6",                    # nor here: its activation is not a ReLU
    "compression=0.5",
])
def test_the_model_and_its_inference_engine_agree_on_every_transition(transition):
    from twins import without_engine

    from densedsl.nn.build import build_model

    network = densedsl.parse(_net(transition)).network
    torch.manual_seed(0)
    model = build_model(network)
    with torch.no_grad():  # random BN statistics, so that a misplaced norm shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    plain = without_engine(build_model(network)).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16) * 4
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [5, 6, 7, 8, 9, 10, 11, 56])
@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 0), (3, 2, 1), (2, 2, 0), (3, 3, 1)])
def test_window_out_in_ceil_mode_is_torchs(size, kernel, stride, padding):
    from densedsl.ir.ops import window_out
    pool = torch.nn.MaxPool2d(kernel, stride, padding, ceil_mode=True)
    assert window_out(size, kernel, stride, padding, ceil=True) == pool(torch.zeros(1, 1, size, size)).shape[-1]


@pytest.mark.parametrize("where", ["stem", "transition"])
def test_the_model_pools_in_ceil_mode_where_the_analysis_says(where):
    from densedsl.nn.build import build_model
    network = densedsl.parse(_ceil_net(57, where)).network
    model = build_model(network)
    assert [m.ceil_mode for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)] == [True]
    shapes = []
    handle = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)][0].register_forward_hook(
        lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 57, 57))
    handle.remove()
    node = "stem.pool0" if where == "stem" else "transition1.pool"
    assert shapes == [densedsl.analyze(_ceil_net(57, where)).arch.nodes[node]["out_shape"]]
