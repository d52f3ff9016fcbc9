"""Reference weights in DenseNet's relatives (issue 22): `load_weights` renames timm's VoVNet and
pytorchcv's DenseNet, SparseNet and HarDNet state_dicts to densedsl's names (nn/weights.py,
`_RELATIVES`), and the compiled spec then computes the reference's function in eval mode.

Every reference is built with pretrained=False (nothing is downloaded) and its batch norms get
random affines and running statistics, so the inference engine's folds are tested on more than
identities. timm's VoVNet layout is pinned in tests/data/timm_vovnet*_state_dict.tsv (timm
1.0.31), so the name mapping is checked where timm cannot be imported (it needs a torchvision
whose operators load); the output comparison with timm itself skips there.
"""

from __future__ import annotations

import importlib

import pytest

torch = pytest.importorskip("torch")

from conftest import SPECS  # noqa: E402

import densedsl  # noqa: E402
from densedsl.nn.weights import (  # noqa: E402
    PYTORCHCV, TIMM_VOVNET, WeightsError, fit, load_weights, normalised_weights, weights_convention,
)

DATA = SPECS.parent / "tests" / "data"


def _randomised(model: torch.nn.Module, var: tuple[float, float] = (0.5, 1.5)) -> torch.nn.Module:
    """`model` in eval mode with random BN affines and statistics. A small running variance
    (HarDNet's cases) makes BN amplify, so ReLU6's clamp at 6 changes the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(*var, generator=g)
    return model.eval()


def _largest_difference(ref: torch.nn.Module, model: torch.nn.Module, size: int,
                        dtype: torch.dtype) -> tuple[float, float]:
    """(max |ours − theirs|, max |theirs|) on one random image."""
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=dtype)
    with torch.no_grad():
        expected, got = ref.to(dtype)(x), model.to(dtype)(x)
    assert got.shape == expected.shape
    return float((got - expected).abs().max()), float(expected.abs().max())


# --- timm's VoVNet: the layout, pinned ---------------------------------------------------------------

def _timm_layout(name: str) -> dict[str, torch.Tensor]:
    """A state_dict of timm's `name` (zeros, stride-0 views: no memory) from its pinned layout."""
    state = {}
    for line in (DATA / f"timm_{name}_state_dict.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            state[key] = (torch.tensor(0) if shape == "scalar"
                          else torch.zeros(()).expand(*map(int, shape.split("x"))))
    return state


@pytest.mark.parametrize("name, spec", [("vovnet39a", "vovnet39"), ("vovnet57a", "vovnet57")])
def test_timms_vovnet_layout_names_the_specs_tensors_in_their_order(name, spec):
    """Every tensor of timm's vovnet39a/57a lands on the spec's tensor of the same shape at the
    same position: stem.i → convi/normi, stages.s.blocks.b.conv_mid.l → denseblockB.denselayer(l+1),
    conv_concat → transitionB (B counted through the network), head.fc → classifier."""
    theirs = _timm_layout(name)
    own = densedsl.compile(SPECS / f"{spec}.dense", device="meta").state_dict()
    state, convention = normalised_weights(theirs, own)
    assert convention == TIMM_VOVNET == weights_convention(theirs)
    assert list(state) == list(own)
    f = fit(state, own)
    assert (f.reshaped, f.missing, f.unexpected, f.unusable) == ((), (), (), ())
    assert state["features.denseblock4.denselayer5.conv1.weight"] is theirs["stages.2.blocks.1.conv_mid.4.conv.weight"]


def test_a_wrong_shape_is_refused_naming_densedsls_key_and_the_files():
    state = _timm_layout("vovnet39a")
    state["stages.0.blocks.0.conv_mid.1.conv.weight"] = torch.zeros(128, 64, 3, 3)
    with pytest.raises(WeightsError) as e:
        load_weights(densedsl.compile(SPECS / "vovnet39.dense"), state)
    assert e.value.mismatched == (("features.denseblock1.denselayer2.conv1.weight", "128x128x3x3", "128x64x3x3"),)
    message = str(e.value)
    assert "E908" in message and "timm VoVNet layout" in message
    assert ("features.denseblock1.denselayer2.conv1.weight (the file's stages.0.blocks.0.conv_mid.1.conv.weight): "
            "model 128x128x3x3, weights 128x64x3x3") in message


def test_timms_ese_vovnet_is_refused_with_the_reason():
    """ese_vovnet39b has vovnet39a's convolutions plus an attention module per block: loading it
    (strict) names the attention, which no spec can say, instead of silently dropping it."""
    state = _timm_layout("vovnet39a")
    state["stages.0.blocks.0.attn.fc.weight"] = torch.zeros(256, 256, 1, 1)
    with pytest.raises(WeightsError) as e:
        load_weights(densedsl.compile(SPECS / "vovnet39.dense", device="meta"), state)
    assert e.value.unexpected == ("stages.0.blocks.0.attn.fc.weight",)
    assert "attention module" in str(e.value)


# --- timm's VoVNet: the function -------------------------------------------------------------------

def _timm():
    try:
        return importlib.import_module("timm")
    except (ImportError, RuntimeError) as e:  # RuntimeError: a torchvision whose operators do not load
        pytest.skip(f"timm cannot be imported: {str(e).splitlines()[0]}")


@pytest.mark.parametrize("name, spec", [("vovnet39a", "vovnet39"), ("vovnet57a", "vovnet57")])
def test_timms_vovnet_weights_compute_timms_function(name, spec):
    torch.manual_seed(0)
    ref = _randomised(_timm().create_model(name, pretrained=False))
    model = load_weights(densedsl.compile(SPECS / f"{spec}.dense", size=96).eval(), ref.state_dict())
    assert model.weights_convention == TIMM_VOVNET
    diff, scale = _largest_difference(ref, model, 96, torch.float32)
    assert diff <= 1e-5 * scale and scale > 1e-3


# --- pytorchcv ----------------------------------------------------------------------------------

def _pytorchcv(module: str, name: str) -> torch.nn.Module:
    """pytorchcv's model, its fixed 7x7 final average pool (global at 224 px) made global at any
    size, as the specs' heads are: the comparisons run at 96 px, 5x fewer MACs."""
    pytest.importorskip("pytorchcv")
    torch.manual_seed(0)
    model = getattr(importlib.import_module(f"pytorchcv.models.{module}"), name)(pretrained=False)
    assert isinstance(model.features.final_pool, torch.nn.AvgPool2d) and model.features.final_pool.kernel_size == 7
    model.features.final_pool = torch.nn.AdaptiveAvgPool2d(1)
    return model


def _hardnet_with_relu_layers(name: str) -> densedsl.Spec:
    """The spec's `act=relu`: its dense layers' activation ReLU (stem and transitions keep
    ReLU6), pytorchcv's HarDNet-68/85, whose harmonic layers are `conv3x3_block`s with its
    default ReLU."""
    return densedsl.load(SPECS / f"{name}.dense", params={"act": "relu"})


# (module, name, spec, BN running variance, dtype). HarDNet's small variances make its ReLU6s clamp; the network then amplifies
# float32 rounding about 10^6-fold (pytorchcv's own model in float32 and float64 differs by 0.5 of
# 7), so HarDNet is compared in float64, where the two agree to 1e-6 of the output.
PYTORCHCV_MODELS = [
    ("sparsenet", "sparsenet121", "sparsenet.dense", (0.5, 1.5), torch.float32),
    ("densenet", "densenet121", "densenet121.dense", (0.5, 1.5), torch.float32),
    ("hardnet", "hardnet68", "hardnet68 with ReLU layers", (0.02, 0.1), torch.float64),
    ("hardnet", "hardnet85", "hardnet85 with ReLU layers", (0.02, 0.1), torch.float64),
    ("hardnet", "hardnet39ds", "hardnet39ds.dense", (0.02, 0.1), torch.float64),
]


@pytest.mark.parametrize("module, name, spec, var, dtype", PYTORCHCV_MODELS, ids=[m[1] for m in PYTORCHCV_MODELS])
def test_pytorchcvs_weights_compute_pytorchcvs_function(module, name, spec, var, dtype):
    ref = _randomised(_pytorchcv(module, name), var)
    source = _hardnet_with_relu_layers(name) if spec.endswith("ReLU layers") else SPECS / spec
    model = load_weights(densedsl.compile(source).eval(), ref.state_dict())
    assert model.weights_convention == PYTORCHCV == weights_convention(ref.state_dict())
    diff, scale = _largest_difference(ref, model, 96, dtype)
    assert diff <= 1e-5 * scale and scale > 1e-3


def test_hardnet68_as_specified_is_the_official_function_not_pytorchcvs():
    """specs/hardnet68.dense follows the official code (ReLU6 in every layer); pytorchcv's
    weights load into it (same tensors), but where a harmonic layer's value passes 6 the two
    differ: only the activation of the dense layers separates them (the test above)."""
    ref = _randomised(_pytorchcv("hardnet", "hardnet68"), (0.02, 0.1))
    model = load_weights(densedsl.compile(SPECS / "hardnet68.dense").eval(), ref.state_dict())
    diff, scale = _largest_difference(ref, model, 96, torch.float64)
    assert diff > 0.05 * scale


def test_pytorchcvs_vovnet_is_refused_with_the_reason():
    """pytorchcv's VoVNet adds residuals the spec (timm's vovnet39a) lacks: its weights are refused
    with that reason, not mapped onto a network that computes something else."""
    state = _pytorchcv("vovnet", "vovnet39").state_dict()
    with pytest.raises(WeightsError) as e:
        load_weights(densedsl.compile(SPECS / "vovnet39.dense", device="meta"), state)
    message = str(e.value)
    assert "pytorchcv layout" in message and "residual" in message
    assert "features.stage1.unit1.branches.branch1.conv.weight" in e.value.unexpected


def test_hardnet_blocks_are_numbered_through_the_network():
    """pytorchcv's HarDNet-68 has two units in stage 2: stage2.unit2 is densedsl's block 3 and
    stage3.unit1 block 4, read off the file's own keys."""
    theirs = _pytorchcv("hardnet", "hardnet68").state_dict()
    own = densedsl.compile(SPECS / "hardnet68.dense", device="meta").state_dict()
    state, _ = normalised_weights(theirs, own)
    assert state["features.transition3.conv.weight"] is theirs["features.stage2.unit2.conv.conv.weight"]
    assert state["features.denseblock4.denselayer16.conv1.weight"] is \
        theirs["features.stage3.unit1.blocks.block16.conv.weight"]
    assert list(state) == list(own)


def test_blocks_are_numbered_in_numeric_order_past_nine():
    """A stage of twelve OSA blocks: blocks.10 is block 11, after blocks.9, not after blocks.1."""
    theirs = {f"stages.0.blocks.{b}.conv_concat.conv.weight": torch.full((1,), float(b)) for b in range(12)}
    state, convention = normalised_weights(theirs, {})
    assert convention == TIMM_VOVNET
    assert [float(state[f"features.transition{n}.conv.weight"]) for n in range(1, 13)] == list(map(float, range(12)))


def test_a_classifier_alone_is_not_taken_for_a_relatives():
    """`head.fc` and `output` name many models' classifiers (timm's ConvNeXt, any nn.Module with
    an `output` layer): without a VoVNet or pytorchcv body beside them they keep their names."""
    for key in ("head.fc.weight", "output.weight", "output.fc.weight"):
        state = {key: torch.zeros(1000, 1024), "features.conv0.weight": torch.zeros(64, 3, 7, 7)}
        renamed, convention = normalised_weights(state, {})
        assert (list(renamed), convention) == ([key, "features.conv0.weight"], weights_convention(state))
        assert convention == "densedsl/torchvision"
