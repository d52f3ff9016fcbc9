"""Every promise the analysis makes, held against the compiled PyTorch model.

The analysis never builds a tensor; these tests build the model it describes and check that
parameters, buffers, state_dict entries, per-module weights, output shape, FLOPs, feature maps and
the minimum input sizes are what it predicted — for generated networks, not only the zoo.
"""

from __future__ import annotations

import dataclasses

import pytest
from measure import saved_bytes_of

torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import densedsl  # noqa: E402
from densedsl.analysis.figures import analyze  # noqa: E402
from densedsl.language.network import Dropout, Pool  # noqa: E402
from densedsl.nn.build import build_model  # noqa: E402
from densedsl.testing.strategies import family_texts, networks  # noqa: E402

SMALL = dict(max_blocks=3, max_layers=4, growth=(1, 8), ranks=(1, 2, 3))
WITH_MLPS = {**SMALL, "ranks": (0, 1, 2, 3)}  # rank 0: feature vectors, MLPs of linear layers
PROMISES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROMISES
@given(networks(**WITH_MLPS))
def test_counts_shapes_and_flops_equal_the_analysis(network):
    a = analyze(network)
    model = build_model(network).eval()
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == a.params
    assert sum(b.numel() for name, b in model.named_buffers()
               if not name.endswith("num_batches_tracked")) == a.buffers
    assert len(state) == a.state_dict_entries
    # every weight-owning node of the graph is a module of the model with exactly its parameters
    modules = dict(model.named_modules())
    for node, attrs in a.graph.nodes(data=True):
        if attrs.get("module"):
            module = modules[attrs["module"]]
            assert sum(p.numel() for p in module.parameters()) == attrs["params"], node
    x = torch.randn(2, *network.input)
    before = x.clone()
    # the analysis counts the network as specified, which the training path runs op for op
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        y = model.train()(x)
    torch.testing.assert_close(x, before, rtol=0, atol=0)  # no model writes into its input
    assert tuple(y.shape[1:]) == tuple(a.output_shape)
    assert counter.get_total_flops() == 2 * a.flops  # per image in the analysis, batch of 2 here
    # inference may only be cheaper (avg-pool before a transition's 1x1 conv), never different
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x)
    assert counter.get_total_flops() <= 2 * a.flops
    torch.testing.assert_close(x, before, rtol=0, atol=0)
    if x.dim() == 4:  # the inference engine's channels_last path
        model.eval()(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(x, before, rtol=0, atol=0)


@PROMISES
@given(networks(**SMALL))
def test_feature_maps_are_what_feature_info_says(network):
    a = analyze(network)
    model = build_model(network, features_only=True).eval()
    # the model's timm-style list says what the analysis says, entry for entry
    assert model.feature_info == [{"num_chs": f.channels, "reduction": f.reduction, "module": f.module}
                                  for f in a.feature_info]
    x = torch.randn(1, *network.input)
    plain = build_model(network, features_only=True, engine=False).eval()  # the engine calls no hooks
    hooked = {}
    modules = dict(plain.named_modules())
    for info in a.feature_info:  # `module` names the module whose output the map is
        modules[info.module].register_forward_hook(
            lambda m, i, out, name=info.name: hooked.update({name: tuple(out.shape[1:])}))
    with torch.no_grad():
        plain(x)
        maps = model(x)
    assert list(maps) == [f.name for f in a.feature_info]
    assert ("stem" in maps) == any(not isinstance(op, (Pool, Dropout)) for op in network.stem.ops)
    for info, tensor in zip(a.feature_info, maps.values()):
        assert tuple(tensor.shape[1:]) == tuple(info.shape) == hooked[info.name]
        assert info.reduction == _stride_before(network, info.name)


def _stride_before(network, block_name: str) -> int:
    """The product of every stride before a block (or the stem's tap, before its trailing pools
    and dropouts): its reduction, derived from the spec alone. With per-axis strides (`stride=1x2`)
    each axis has its own product; the reduction is the largest."""
    return max(_strides_before(network, block_name, axis) for axis in range(len(network.input) - 1))


def _strides_before(network, block_name: str, axis: int) -> int:
    def along(value) -> int:
        return value[axis] if isinstance(value, tuple) else value
    stride = 1
    stem = list(network.stem.ops)
    if block_name == "stem":
        while isinstance(stem[-1], (Pool, Dropout)):
            stem.pop()
    for op in stem:
        stride *= along(getattr(op, "stride", 1))
    if block_name == "stem":
        return stride
    for stage in network.stages:
        if f"denseblock{getattr(stage, 'layers', None) and stage.index}" == block_name:
            return stride
        if hasattr(stage, "pool"):
            stride *= along(stage.pool.stride if stage.pool else stage.stride)  # pool=none: the conv's
    raise AssertionError(block_name)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks(max_blocks=3, max_layers=2, growth=(1, 4), ranks=(1, 2, 3)))
def test_minimum_input_sizes_are_exact(network):
    """At the predicted minimum the model runs; one pixel less and PyTorch itself refuses."""
    sizes = analyze(network).min_input_size
    rank = len(network.input) - 1
    for train, size in ((False, sizes.eval), (True, sizes.train)):
        net = dataclasses.replace(network, input=(network.input[0],) + (size,) * rank)
        model = build_model(net).train(train)
        model(torch.randn(1, *net.input))  # must not raise
        if size > 1:
            with pytest.raises((RuntimeError, ValueError)):
                model(torch.randn(1, network.input[0], *(size - 1,) * rank))


def test_densenet121_minimum_sizes_match_pytorch():
    import densedsl
    spec = densedsl.load("specs/densenet121.dense")
    sizes = densedsl.analyze(spec).min_input_size
    assert (sizes.eval, sizes.train) == (29, 61)  # torchvision's metadata says 29; 61 measured
    model = densedsl.compile(spec)
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 29, 29))
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 3, 28, 28))
    model.train()(torch.randn(1, 3, 61, 61))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(torch.randn(1, 3, 60, 60))


@PROMISES
@given(family_texts(**WITH_MLPS))
def test_networks_written_as_families_compile_to_what_the_analysis_counts(drawn):
    """Lists and `for … between` are front-end only: the model of the family text is the analysed one."""
    _, text = drawn
    network = densedsl.parse(text).network
    a = analyze(network)
    model = build_model(network).eval()
    assert sum(p.numel() for p in model.parameters()) == a.params
    assert len(model.state_dict()) == a.state_dict_entries
    with torch.no_grad():
        y = model(torch.randn(2, *network.input))
    assert tuple(y.shape[1:]) == tuple(a.output_shape)




@pytest.mark.parametrize("order", ["pre", "post"])
@pytest.mark.parametrize("activation", ["relu6", "leaky_relu", "silu", "gelu", "elu"])
def test_an_activations_saved_tensors_are_what_the_analysis_adds(activation, order):
    """Against the same network with ReLU: what the analysis adds for the activation (its output
    beside the input it saves, where ReLU runs in place) is exactly what autograd keeps more."""
    def net(fn):
        return densedsl.parse(f"network d {{\n input 3x16x16\n stem {{\n conv 8\n }}\n"
                              f" dense layers=3 growth=4 bottleneck=2 activation={fn} order={order}\n"
                              f" transition\n dense layers=2 growth=4 activation={fn} order={order}\n"
                              f" head classes=2\n}}\n").network
    relu, other = net("relu"), net(activation)
    assert analyze(other).params == analyze(relu).params
    assert analyze(other).memory(2) > analyze(relu).memory(2)
    assert saved_bytes_of(other) - analyze(other).memory(2) == saved_bytes_of(relu) - analyze(relu).memory(2)
