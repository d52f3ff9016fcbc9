"""DenseNet's relatives written in the language equal their reference implementations to the
parameter and the multiply-add (issue 22): each spec under specs/ against pytorchcv's model,
built with pretrained=False (no download), counted by torch.utils.flop_counter at 224x224.

The analysis' figures (what `check` and `summary` print, no torch) must equal the reference's,
and so must the compiled model's, run on the same input: same parameter count, same MACs, same
output shape. pytorchcv is installed without its dependencies (it names torchvision, which its
sparsenet, hardnet and vovnet modules never import): see .ci/run.
"""

from __future__ import annotations

import importlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorchcv")

from conftest import SPECS  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import densedsl  # noqa: E402
from densedsl.nn.build import build_model  # noqa: E402


def _counted(model: torch.nn.Module, size: int = 224) -> tuple[int, int, tuple[int, ...]]:
    """(parameters, MACs, output shape) of one forward pass on a 1x3xSxS input.

    The model runs in train mode: eval mode lets densedsl's inference engine skip work the
    training graph does (a cached BN-ReLU-conv prefix), which is not the architecture's count."""
    x = torch.randn(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        y = model.train()(x)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2, tuple(y.shape)


def _reference(module: str, name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(importlib.import_module(f"pytorchcv.models.{module}"), name)(pretrained=False)


def _assert_equal_to_reference(spec: str, module: str, name: str, params: int,
                               overrides: dict | None = None) -> None:
    a = densedsl.analyze(SPECS / spec, params=overrides)
    ref_params, ref_macs, ref_shape = _counted(_reference(module, name))
    assert ref_params == params  # the figure the spec's comment (and pytorchcv's own assert) states
    assert (a.params, a.macs) == (ref_params, ref_macs)
    torch.manual_seed(0)
    assert _counted(build_model(a.network)) == (ref_params, ref_macs, ref_shape)


# --- SparseNet: DenseNet's skeleton with links=log emit=log ---------------------------------------

SPARSENETS = [
    ("sparsenet121", None, 3_250_824),
    ("sparsenet161", {"growth": 48, "init": 96, "blocks": [6, 12, 36, 24]}, 9_853_288),
    ("sparsenet169", {"blocks": [6, 12, 32, 32]}, 4_709_864),
    ("sparsenet201", {"blocks": [6, 12, 48, 32]}, 5_703_144),
    ("sparsenet264", {"blocks": [6, 12, 64, 48]}, 7_717_224),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, overrides, params", SPARSENETS, ids=[s[0] for s in SPARSENETS])
def test_sparsenet_equals_pytorchcv(name, overrides, params):
    _assert_equal_to_reference("sparsenet.dense", "sparsenet", name, params, overrides)


def test_sparsenet121_expect_lines_state_pytorchcvs_figures():
    """The spec's own `expect` lines pass (check would fail otherwise) and are pytorchcv's."""
    a = densedsl.analyze(SPECS / "sparsenet.dense")
    expected = {e.key: e.value for e in a.network.expectations}
    assert expected["params"] == a.params == 3_250_824
    assert expected["flops"] == 2 * a.macs == 2 * 1_819_742_464


# --- HarDNet: harmonic links, odd emits, post-activation ReLU6 layers and transitions -----------
# pytorchcv's HarDNet layers use ReLU where the official code (and these specs) have ReLU6 (its
# stem and transitions keep ReLU6): counts and shapes are compared here; with `act=relu` the specs
# compute pytorchcv's outputs from its weights (tests/test_relatives_weights.py).

@pytest.mark.slow
@pytest.mark.parametrize("name, params", [("hardnet68", 17_565_348), ("hardnet85", 36_670_212)])
def test_hardnet_equals_pytorchcv(name, params):
    _assert_equal_to_reference(f"{name}.dense", "hardnet", name, params)


def test_hardnet68_first_block_and_transition_are_the_official_ones():
    """Block 1 (in 64, growth 14, 8 layers) emits layers 1, 3, 5, 7, 8 = 124 channels into a
    1x1 Conv-BN-ReLU6 to 128 and a 2x2 max pool (connectivity.md's figures)."""
    a = densedsl.analyze(SPECS / "hardnet68.dense")
    net = a.network
    block, t = net.stages[0], net.stages[1]
    assert (block.links, block.emit, block.width_factor, block.order, block.activation, block.bottleneck) == (
        "harmonic", "odd", 1.7, "post", "relu6", None)
    assert (t.channels, t.order, t.activation, t.pool.mode, t.pool.kernel) == (128, "post", "relu6", "max", 2)
    assert a.arch.nodes["transition1.conv"]["in_shape"] == (124, 56, 56)
    assert a.arch.nodes["transition1.pool"]["out_shape"] == (128, 28, 28)


# --- HarDNet-DS: separable layers, a 1x1 stem conv, depthwise stride-2 downsampling -------------
# pytorchcv's DS models use ReLU6 wherever the official code does (its DS layers take the
# network's activation), so here outputs are compared too, after loading its weights.

HARDNETS_DS = [("hardnet39ds", 3_488_228, 429_471_474), ("hardnet68ds", 4_180_602, 775_281_526)]


@pytest.mark.parametrize("name, params, macs", HARDNETS_DS, ids=[h[0] for h in HARDNETS_DS])
def test_hardnet_ds_equals_pytorchcv(name, params, macs):
    _assert_equal_to_reference(f"{name}.dense", "hardnet", name, params)
    a = densedsl.analyze(SPECS / f"{name}.dense")
    expected = {e.key: e.value for e in a.network.expectations}
    assert (expected["params"], expected["flops"]) == (params, 2 * macs) == (a.params, 2 * a.macs)


def test_hardnet39ds_computes_pytorchcvs_function_with_its_weights():
    """Both models hold their weights in the same order (stem, then each block's layers, its
    1x1 conv and its depthwise downsampling, then the classifier), so pytorchcv's state dict
    maps onto the spec's entry by entry; BN statistics are randomised so eval mode (densedsl's
    inference engine, BNs folded into the convs) is tested on more than identities."""
    torch.manual_seed(0)
    ref = _reference("hardnet", "hardnet39ds")
    model = build_model(densedsl.analyze(SPECS / "hardnet39ds.dense").network)
    theirs = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    ours = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(theirs) == len(ours)
    g = torch.Generator().manual_seed(1)
    for k, v in theirs.items():
        if k.endswith(("running_mean", "bn.bias")):
            v.normal_(0, 0.1, generator=g)
        elif k.endswith(("running_var", "bn.weight")):
            v.uniform_(0.5, 1.5, generator=g)
    model.load_state_dict(dict(zip(ours, theirs.values())), strict=False)
    x = torch.randn(2, 3, 224, 224, generator=g)
    with torch.no_grad():
        expected, got = ref.eval()(x), model.eval()(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert expected.std() > 1e-3  # the comparison is not between two near-zero outputs


# --- VoVNet: chains aggregated once (links=chain emit=all) by a post-activation 1x1 transition ---
# pytorchcv's VoVNet adds a residual around every block but a stage's first (timm's 'a' models,
# whose counts these are, have none): counts equal, outputs differ.

@pytest.mark.slow
@pytest.mark.parametrize("name, params", [("vovnet39", 22_600_296), ("vovnet57", 36_640_296)])
def test_vovnet_equals_pytorchcv(name, params):
    _assert_equal_to_reference(f"{name}.dense", "vovnet", name, params)


def test_vovnet39_pools_in_ceil_mode_to_28_14_7():
    a = densedsl.analyze(SPECS / "vovnet39.dense")
    sizes = [attrs["out_shape"][1:] for name, attrs in a.arch.nodes.items()
             if name.startswith("transition") and name.endswith(".pool")]
    assert sizes == [(28, 28), (14, 14), (7, 7)]
    assert not a.diagnostics
