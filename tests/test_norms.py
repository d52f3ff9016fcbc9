"""A dense layer's `norm=`: batch (the paper's), group, instance, layer and none, through every
stage: costs, graph, diagnostics, fmt, diagram, explain, the model, the `.py` export and the
inference engine."""

from __future__ import annotations

import pytest
from measure import saved_bytes_of
from twins import exported_twin, without_engine

import densedsl
from densedsl.analysis.figures import analyze
from densedsl.core import diagnostics as d
from densedsl.core.source import Source
from densedsl.language.fmt import format_spec
from densedsl.language.syntax import parse_source

NORMS = ["batch", "group norm_groups=2", "instance", "layer", "none"]


def spec(norm: str, order: str = "pre") -> str:
    return f"""network n {{
    input 3x16x16
    stem {{
        conv 8
    }}
    dense layers=3 growth=4 bottleneck=2 norm={norm} order={order}
    transition compression=0.5
    dense layers=2 growth=4 norm={norm}
    head classes=3
}}
"""


def network(norm: str, order: str = "pre"):
    return densedsl.parse(spec(norm, order)).network


def test_norm_is_a_dense_setting_and_a_default():
    text = spec("batch").replace("    stem", "    defaults norm=group norm_groups=4\n    stem").replace(
        " norm=batch order=pre", "").replace(" norm=batch", " norm=layer")
    blocks = densedsl.parse(text).network.blocks
    assert [(b.norm, b.norm_groups) for b in blocks] == [("group", 4), ("layer", 32)]
    assert densedsl.parse(spec("batch").replace(" norm=batch", "")).network == network("batch")


@pytest.mark.parametrize("order", ["pre", "post"])
def test_each_norm_is_costed_exactly(order):
    """GroupNorm has BN's affine parameters (2 per channel) and no running statistics; none has
    neither. Convs are unchanged, so MACs are too; transitions and the head keep their BNs."""
    figures = {norm.split()[0]: analyze(network(norm, order)) for norm in NORMS}
    bn = figures["batch"]
    dense_bn_buffers = sum(a["buffers"] for n_, a in bn.graph.nodes(data=True) if ".denselayer" in n_)
    assert dense_bn_buffers > 0
    assert {f.macs for f in figures.values()} == {bn.macs}
    for name in ("group", "instance", "layer"):
        assert figures[name].params == bn.params  # weight and bias per channel, as BN's
        assert figures[name].buffers == bn.buffers - dense_bn_buffers
    assert figures["none"].params == bn.params - dense_bn_buffers  # BN: 2 params, 2 buffers a channel
    assert figures["none"].buffers == bn.buffers - dense_bn_buffers
    dense_norms = 3 * 2 + 2 * 1  # block 1: 3 layers with a bottleneck; block 2: 2 without
    entries = {"batch": 5, "group": 2, "instance": 2, "layer": 2, "none": 0}
    for name, a in figures.items():
        assert a.state_dict_entries == figures["none"].state_dict_entries + entries[name] * dense_norms


def test_the_graph_names_each_norm_and_keeps_torchvisions_names():
    g = analyze(network("group norm_groups=2")).graph
    node = g.nodes["denseblock1.denselayer2.norm1"]
    assert (node["kind"], node["groups"], node["channels"], node["style"]) == ("groupnorm", 2, 12, "group")
    assert node["module"] == "features.denseblock1.denselayer2.norm1"
    g = analyze(network("instance")).graph
    assert g.nodes["denseblock1.denselayer2.norm1"]["groups"] == 12  # GroupNorm(C, C)
    g = analyze(network("layer")).graph
    assert g.nodes["denseblock1.denselayer2.norm1"]["groups"] == 1  # GroupNorm(1, C)
    g = analyze(network("none")).graph
    assert "denseblock1.denselayer2.norm1" not in g and "transition1.norm" in g


@pytest.mark.parametrize("norm", NORMS)
def test_fmt_round_trips_the_setting(norm):
    text = spec(norm)
    assert format_spec(parse_source(Source.from_text(text))) == text


def test_norm_groups_that_do_not_divide_show_the_numbers():
    with pytest.raises(densedsl.SpecError) as e:
        analyze(network("group norm_groups=3"))
    diag = e.value.diagnostics[0]
    assert diag.code is d.BAD_GROUPS
    assert diag.message == ("denseblock1.denselayer1.norm1: norm_groups=3 does not divide its 8 channels "
                            "(8 = 2·3 + 2)")


def test_a_later_layers_width_is_checked_too():
    # 8 and the bottleneck's 8 divide by 8; the second layer's 12 input channels do not
    with pytest.raises(densedsl.SpecError) as e:
        analyze(network("group norm_groups=8"))
    assert "denselayer2.norm1: norm_groups=8 does not divide its 12 channels" in e.value.diagnostics[0].message


def test_norm_groups_without_a_group_norm_is_a_conflict():
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(spec("layer norm_groups=2"))
    diag = e.value.diagnostics[0]
    assert diag.code is d.CONFLICT and diag.span.source.text[diag.span.start:diag.span.end] == "2"


def test_an_unknown_norm_is_located_with_the_choices():
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(spec("grop"))
    diag = e.value.diagnostics[0]
    assert diag.code is d.WRONG_TYPE and diag.hint == "did you mean 'group'?"


def test_explain_and_the_diagram_show_the_norm():
    from densedsl.views import report
    from densedsl.views.diagram import to_digraph
    recipes = {norm.split()[0]: report.explain(analyze(network(norm)), 1).recipe for norm in NORMS}
    assert recipes == {
        "batch": "BN-ReLU-Conv1x1(8)-BN-ReLU-Conv3x3(4)",
        "group": "GN2-ReLU-Conv1x1(8)-GN2-ReLU-Conv3x3(4)",
        "instance": "IN-ReLU-Conv1x1(8)-IN-ReLU-Conv3x3(4)",
        "layer": "LN-ReLU-Conv1x1(8)-LN-ReLU-Conv3x3(4)",
        "none": "ReLU-Conv1x1(8)-ReLU-Conv3x3(4)",
    }
    dot = to_digraph(analyze(network("group norm_groups=2")), "layers").source
    assert "GN2-ReLU-Conv1x1(8)-GN2-ReLU-Conv3x3(4)" in dot


def test_instance_norm_at_a_one_value_map_is_refused_in_eval_too():
    """F.group_norm refuses batch·(C/groups)·∏spatial == 1 in any mode: the minimum inference
    size of an instance-normed block at the end of the downsampling is larger than BN's."""
    torch = pytest.importorskip("torch")
    from densedsl.nn.build import build_model
    bn, inst = analyze(network("batch")), analyze(network("instance"))
    assert (bn.min_input_size.eval, inst.min_input_size.eval) == (2, 4)
    assert inst.min_input_size.train == bn.min_input_size.train == 4
    net = network("instance").with_input((3, 4, 4))
    model = build_model(net).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 4, 4))
        with pytest.raises(ValueError):
            model(torch.randn(1, 3, 3, 3))
    small = analyze(network("instance").with_input((3, 3, 3)))
    (warning,) = [x for x in small.diagnostics if x.code is d.TRAIN_TOO_SMALL]
    assert "instance norm refuses it in eval too" in warning.message


def test_models_have_each_norms_modules_and_state_dict():
    torch = pytest.importorskip("torch")
    from densedsl.nn.build import build_model
    model = build_model(network("group norm_groups=2"))
    layer = model.features.denseblock1.denselayer2
    assert isinstance(layer.norm1, torch.nn.GroupNorm) and (layer.norm1.num_groups, layer.norm1.num_channels) == (2, 12)
    assert isinstance(model.features.transition1.norm, torch.nn.BatchNorm2d)
    keys = [k for k in model.state_dict() if k.startswith("features.denseblock1.denselayer1.norm1")]
    assert keys == ["features.denseblock1.denselayer1.norm1.weight", "features.denseblock1.denselayer1.norm1.bias"]
    bn = build_model(network("batch"))
    assert list(bn.state_dict())[:5] == list(build_model(densedsl.parse(
        spec("batch").replace(" norm=batch", "")).network).state_dict())[:5]
    inst = build_model(network("instance")).features.denseblock1.denselayer2.norm1
    assert (inst.num_groups, inst.num_channels) == (12, 12)
    assert not hasattr(build_model(network("none")).features.denseblock1.denselayer1, "norm1")


@pytest.mark.parametrize("order", ["pre", "post"])
@pytest.mark.parametrize("norm", NORMS)
def test_accelerated_plain_and_exported_models_agree(norm, order):
    """The engine folds only BNs: every other norm runs as it is, and the result is the plain
    path's; the `.py` export loads the same weights and computes the same function."""
    torch = pytest.importorskip("torch")
    from densedsl.nn.build import build_model
    net = network(norm, order)
    torch.manual_seed(0)
    model = build_model(net)
    for m in model.modules():  # non-trivial affine parameters and statistics
        if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d)):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.5, 0.5)
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        accelerated = model(x)
        assert any(getattr(m, "engine", None) is not None for m in model.modules()), \
            "compile applies the engine"
        plain = without_engine(model)(x)
    torch.testing.assert_close(accelerated, plain, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(exported_twin(net, model)(x), plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("memory", ["standard", "efficient"])
def test_without_a_norm_the_first_relu_leaves_the_block_input_alone(memory):
    """Pre-activation with norm=none starts each layer with a ReLU on its concatenation; in layer
    1 that is the block's input itself, read by every later layer: an in-place ReLU would
    overwrite it (and the caller's tensor)."""
    torch = pytest.importorskip("torch")
    from densedsl.nn.build import build_model
    model = build_model(network("none"), memory=memory)
    block = model.features.denseblock1
    assert block.denselayer1.relu1.inplace is False and block.denselayer1.relu2.inplace is False
    x = torch.randn(2, 8, 16, 16, requires_grad=memory == "efficient")
    before = x.detach().clone()
    for mode in (True, False):
        block.train(mode)
        y = block(x)
        assert torch.equal(x.detach(), before)
        assert torch.equal(y[:, :8].detach(), before)  # the block's output starts with its input
        if memory == "efficient":
            y.sum().backward()


def test_without_a_norm_the_memory_model_counts_the_relus_own_output():
    """The out-of-place ReLU owns its output: the analysis' inference peak grows by what autograd
    and the allocator see, and the saved tensors still agree with autograd (tests/test_promises)."""
    from densedsl.analysis.figures import analyze
    g = analyze(network("none")).graph
    assert g.nodes["denseblock1.denselayer1.relu1"].get("inplace") is False
    from densedsl.analysis.memory import _storages
    storage = _storages(g, training=True)
    assert storage["denseblock1.denselayer1.relu1"] == "denseblock1.denselayer1.relu1"
    assert storage["denseblock1.denselayer1.relu2"] == "denseblock1.denselayer1.relu2"
    bn = _storages(analyze(network("batch")).graph, training=True)
    assert bn["denseblock1.denselayer1.relu2"] == "denseblock1.denselayer1.norm2"  # BN's: in place




@pytest.mark.parametrize("order", ["pre", "post"])
@pytest.mark.parametrize("norm", NORMS[1:])
def test_a_norms_saved_tensors_are_what_the_analysis_counts(norm, order):
    """Against the same network with BN: what autograd keeps more or less (GroupNorm's input and
    its mean and 1/std per sample and group; with no norm, the ReLU's own output) is what the
    analysis says. BN's backward also holds its running statistics, buffers the analysis leaves
    out (they exist anyway) and this measure counts: the dense layers' BN buffers, 4 bytes each,
    are the only other difference."""
    bn, other = network("batch", order), network(norm, order)
    a_bn, a_other = analyze(bn), analyze(other)
    running = 4 * (a_bn.buffers - a_other.buffers)
    assert running > 0
    assert saved_bytes_of(other) - a_other.memory(2) == saved_bytes_of(bn) - a_bn.memory(2) - running


def test_group_norm_networks_train_without_crashing_the_process():
    """torch 2.13's CPU GroupNorm backward on channels_last maps fed by a conv crashes the
    process (SIGSEGV): models with group norms keep NCHW in CPU training. Run in a subprocess,
    so a crash fails this test instead of the whole run."""
    import subprocess
    import sys
    code = ("import torch, densedsl\n"
            "m = densedsl.compile('network n {\\n input 2x8x8\\n dense layers=1 growth=3 bottleneck=4 "
            "groups=3 norm=instance activation=none\\n}')\n"
            "assert m.train_channels_last is False\n"
            "m.train()(torch.randn(3, 2, 8, 8)).pow(2).sum().backward()\n"
            "print('trained')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-2000:]
    assert densedsl.compile("specs/tiny_digits.dense").train_channels_last is True  # BN: unchanged
