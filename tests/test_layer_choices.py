"""Layer choices: a dense layer's activation, through every stage (the memory promise is in
tests/test_promises.py)."""

from __future__ import annotations

import pytest
from twins import exported_twin

import densedsl
from densedsl.analysis.figures import analyze
from densedsl.core import diagnostics as d
from densedsl.core.source import Source
from densedsl.language.fmt import format_spec
from densedsl.language.syntax import parse_source

SPEC = """network n {
    input 3x16x16
    defaults activation=silu
    dense layers=2 growth=4 bottleneck=2
    transition
    dense layers=2 growth=4 activation=gelu order=post
    head classes=3
}
"""


def test_activation_is_a_dense_setting_and_a_default():
    blocks = densedsl.parse(SPEC).network.blocks
    assert [b.activation for b in blocks] == ["silu", "gelu"]
    plain = densedsl.parse(SPEC.replace("    defaults activation=silu\n", "")).network.blocks
    assert plain[0].activation == "relu"


def test_an_unknown_activation_is_located_with_the_choices():
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(SPEC.replace("activation=gelu", "activation=gleu"))
    (diag,) = e.value.diagnostics
    assert diag.code is d.WRONG_TYPE and diag.hint == "did you mean 'gelu'?"
    assert diag.span.source.text[diag.span.start:diag.span.end] == "gleu"


def test_activations_cost_no_parameters_and_leave_the_figures_of_relu():
    relu = analyze(densedsl.parse(SPEC.replace("activation=silu", "activation=relu")
                                  .replace("activation=gelu", "activation=relu")).network)
    other = analyze(densedsl.parse(SPEC).network)
    assert (other.params, other.macs, other.depth) == (relu.params, relu.macs, relu.depth)


def test_the_graph_names_the_activation_and_relu_keeps_torchvisions_names():
    g = analyze(densedsl.parse(SPEC).network).graph
    assert g.nodes["denseblock1.denselayer1.act1"]["fn"] == "silu"
    assert g.nodes["denseblock2.denselayer1.act1"]["fn"] == "gelu"
    relu = analyze(densedsl.parse(SPEC.replace("    defaults activation=silu\n", "")).network).graph
    assert "denseblock1.denselayer1.relu1" in relu


def test_fmt_keeps_the_setting():
    formatted = format_spec(parse_source(Source.from_text(SPEC)))
    assert formatted == SPEC
    assert densedsl.parse(formatted).network == densedsl.parse(SPEC).network


def test_the_diagram_shows_the_activation():
    from densedsl.views.diagram import to_digraph
    dot = to_digraph(analyze(densedsl.parse(SPEC).network), "blocks").source
    assert "SiLU" in dot and "GELU" in dot


def test_model_and_python_export_run_the_activation():
    torch = pytest.importorskip("torch")
    from densedsl.nn.build import build_model
    from densedsl.nn.export import python_source
    network = densedsl.parse(SPEC).network
    model = build_model(network)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"SiLU", "GELU"} <= kinds
    relu_model = build_model(densedsl.parse(SPEC.replace("    defaults activation=silu\n", "")
                                            .replace(" activation=gelu", "")).network)
    assert list(model.state_dict()) == list(relu_model.state_dict())  # weights load either way
    source = python_source(network)
    assert "act1=nn.SiLU()" in source and "act1=nn.GELU()" in source
    exported = exported_twin(network, model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model.eval()(x))


def test_explain_states_each_layers_recipe():
    from densedsl.views import report
    e = report.explain(analyze(densedsl.parse(SPEC).network), 2)
    assert e.recipe == "Conv3x3(4)-BN-GELU"
    assert "each layer: Conv3x3(4)-BN-GELU" in e.text() and e.as_json()["recipe"] == e.recipe


# --- transitions without a pool -----------------------------------------------------------------

POOLLESS = """network n {
    input 3x16x16
    dense layers=2 growth=4
    transition pool=none stride=2 compression=0.5
    dense layers=2 growth=4 activation=silu
    transition pool=none
    dense layers=1 growth=4
    head classes=3
}
"""


def test_pool_none_downsamples_in_the_conv_or_not_at_all():
    net = densedsl.parse(POOLLESS).network
    assert [(t.pool, t.stride) for t in net.transitions] == [(None, 2), (None, 1)]
    a = analyze(net)
    assert a.stage("transition1").out_shape == (5, 8, 8)
    assert a.stage("transition2").out_shape == (13, 8, 8)
    assert "transition1.pool" not in a.graph and "transition1.conv" in a.graph
    assert a.graph.nodes["transition1.conv"]["stride"] == 2
    assert format_spec(parse_source(Source.from_text(POOLLESS))) == POOLLESS


def test_a_pooling_window_on_a_poolless_transition_is_a_conflict():
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(POOLLESS.replace("pool=none stride=2", "pool=none kernel=3"))
    (diag,) = e.value.diagnostics
    assert diag.code is d.CONFLICT and "pool=none" in diag.message and "stride=2" in diag.hint


def test_poolless_transitions_compile_export_and_accelerate_alike():
    torch = pytest.importorskip("torch")
    from densedsl.nn.build import build_model
    from densedsl.nn.engine import accelerate
    network = densedsl.parse(POOLLESS).network
    a = analyze(network)
    model = build_model(network).eval()
    assert sum(p.numel() for p in model.parameters()) == a.params
    assert not hasattr(model.features.transition1, "pool")
    x = torch.randn(2, 3, 16, 16)
    exported = exported_twin(network, model)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(exported(x), expected)
    fast = build_model(network)
    fast.load_state_dict(model.state_dict())
    fast = accelerate(fast).eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), expected)


# --- a dense layer's kernel and groups ----------------------------------------------------------

GROUPED = """network n {
    input 4x8x8
    dense layers=3 growth=8 bottleneck=4 groups=4 kernel=5
}
"""


def test_kernel_and_groups_are_costed_exactly():
    a = analyze(densedsl.parse(GROUPED).network)
    # per layer: BN(c) + 1x1 conv c→32 + BN(32) + 5x5 conv 32→8 in 4 groups (8 inputs each)
    expected = sum(2 * c + c * 32 + 2 * 32 + 8 * 25 * 8 for c in (4, 12, 20))
    assert a.params == expected == 6_216
    conv = a.graph.nodes["denseblock1.denselayer1.conv2"]
    assert (conv["kernel"], conv["padding"], conv["groups"]) == (5, 2, 4)
    assert conv["macs"] == 8 * 25 * 8 * 64
    assert a.stage("denseblock1").out_shape == (28, 8, 8)


def test_groups_that_do_not_divide_show_the_numbers():
    with pytest.raises(densedsl.SpecError) as e:
        analyze(densedsl.parse("network n {\n    input 3x8x8\n    dense layers=3 growth=4 groups=2\n}\n").network)
    (diag,) = e.value.diagnostics
    assert diag.code is d.BAD_GROUPS
    assert diag.message == ("denseblock1.denselayer1: groups=2 does not divide its 3 input channels "
                            "(3 = 1·2 + 1)")
    with pytest.raises(densedsl.SpecError) as e:
        analyze(densedsl.parse(GROUPED.replace("growth=8", "growth=6")).network)
    assert "its 6 output channels (the growth) (6 = 1·4 + 2)" in e.value.diagnostics[0].message
    ok = "network n {\n    input 4x8x8\n    dense layers=3 growth=4 groups=2\n}\n"
    assert analyze(densedsl.parse(ok).network).params  # 4, 8, 12 inputs: all even


def test_an_even_dense_kernel_is_refused():
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(GROUPED.replace("kernel=5", "kernel=4"))
    (diag,) = e.value.diagnostics
    assert diag.code is d.OUT_OF_RANGE and "odd" in diag.message and "3 or 5" in diag.hint


def test_grouped_layers_compile_export_and_accelerate_alike():
    torch = pytest.importorskip("torch")
    from densedsl.nn.build import build_model
    from densedsl.nn.engine import accelerate
    from densedsl.nn.export import python_source
    network = densedsl.parse(GROUPED.replace("dense layers", "stem {\n        conv 4\n    }\n"
                                             "    dense order=post layers")).network
    model = build_model(network).eval()
    assert sum(p.numel() for p in model.parameters()) == analyze(network).params
    conv = model.features.denseblock1.denselayer1.conv2
    assert (conv.groups, conv.kernel_size) == (4, (5, 5))
    source = python_source(network)
    assert "nn.Conv2d(32, 8, 5, padding=2, groups=4, bias=False)" in source
    exported = exported_twin(network, model)
    fast = build_model(network)
    fast.load_state_dict(model.state_dict())
    fast = accelerate(fast).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(exported(x), expected)
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-4)


# --- heads with hidden layers -------------------------------------------------------------------

HIDDEN = """network n {
    input 3x16x16
    dense layers=2 growth=4
    head classes=5 hidden=[32, 16] activation=gelu dropout=0.2
}
"""


def test_hidden_layers_are_costed_and_named_like_timms_pre_logits():
    a = analyze(densedsl.parse(HIDDEN).network)
    # 11 features → 32 → 16 → 5, each Linear with a bias; the head's BN has 2·11
    assert a.stage("head").params == 2 * 11 + (11 * 32 + 32) + (32 * 16 + 16) + (16 * 5 + 5)
    assert a.graph.nodes["head.fc1"]["module"] == "pre_logits.fc1"
    assert a.graph.nodes["head.act2"]["fn"] == "gelu"
    assert a.depth == analyze(densedsl.parse(HIDDEN.replace(" hidden=[32, 16]", "")).network).depth + 2
    assert format_spec(parse_source(Source.from_text(HIDDEN))) == HIDDEN


def test_a_bad_hidden_width_is_located():
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(HIDDEN.replace("[32, 16]", "[32, 0]"))
    (diag,) = e.value.diagnostics
    assert diag.code is d.OUT_OF_RANGE and "hidden width 1" in diag.message
    assert diag.span.source.text[diag.span.start:diag.span.end] == "0"
    assert densedsl.parse(HIDDEN.replace("[32, 16]", "64")).network.head.hidden == (64,)


def test_hidden_heads_compile_export_and_keep_the_classifier():
    torch = pytest.importorskip("torch")
    from densedsl.nn.build import build_model
    network = densedsl.parse(HIDDEN).network
    model = build_model(network).eval()
    assert sum(p.numel() for p in model.parameters()) == analyze(network).params
    assert tuple(model.classifier.weight.shape) == (5, 16) and model.head_hidden_size == 16
    assert "pre_logits.fc2.weight" in model.state_dict()
    exported = exported_twin(network, model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x))
        assert tuple(model.forward_head(model.forward_features(x), pre_logits=True).shape) == (2, 16)


# --- ONNX: every layer choice exports and runs alike ------------------------------------------------

ONNX_SPECS = {
    "activation-groups-poolless-hidden-group-instance": """network n {
    input 3x16x16
    stem {
        conv 8
    }
    dense layers=2 growth=4 bottleneck=2 groups=2 activation=silu norm=group norm_groups=4
    transition pool=none stride=2 compression=0.5
    dense layers=2 growth=4 activation=gelu order=post norm=instance kernel=5
    transition pool=none
    dense layers=1 growth=4 activation=leaky_relu
    head classes=3 hidden=[8, 6] activation=relu6 dropout=0.2
}
""",
    "layer-none": """network n {
    input 3x16x16
    stem {
        conv 8
    }
    dense layers=2 growth=4 bottleneck=2 norm=layer
    transition
    dense layers=2 growth=4 norm=none kernel=1
    dense layers=1 growth=4 norm=none order=post
    head classes=3
}
""",
    "non-square-windows": """network n {
    input 3x16x16
    stem {
        conv 8 kernel=1x7 stride=1x2
        maxpool kernel=3x1 stride=2x1 padding=1x0
    }
    dense layers=2 growth=4 bottleneck=2 kernel=1x3
    transition kernel=2x1 stride=2x1
    dense layers=2 growth=4 kernel=3x5
    transition pool=none stride=1x2
    dense layers=1 growth=4
    head classes=3 kernel=1x2 stride=1x2
}
""",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ONNX_SPECS))
def test_layer_choices_export_to_onnx_and_run_alike(name, tmp_path):
    """`compile -o x.onnx` of each construct (norms, non-square windows too): onnxruntime's output
    is the PyTorch model's."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from densedsl.nn.build import build_model
    from densedsl.nn.export import write_onnx
    model = build_model(densedsl.parse(ONNX_SPECS[name]).network)
    torch.manual_seed(0)
    for m in model.modules():  # non-trivial norms, so a dropped or misplaced one shows
        if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d)):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.5, 0.5)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    out = tmp_path / "x.onnx"
    write_onnx(model, out)
    onnx.checker.check_model(onnx.load(str(out)))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 16, 16)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model.eval()(x), rtol=1e-3, atol=1e-4)
