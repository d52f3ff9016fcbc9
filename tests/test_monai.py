"""MONAI's DenseNet121 (spatial_dims 1, 2, 3) against densedsl's: same parameters, and MONAI's
weights load into the densedsl model with the same outputs (eval mode)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
monai_nets = pytest.importorskip("monai.networks.nets")

from conftest import SPECS  # noqa: E402

import densedsl  # noqa: E402
from densedsl.analysis.figures import analyze  # noqa: E402
from densedsl.nn.build import build_model  # noqa: E402
from densedsl.nn.weights import CONVENTIONS, load_weights, weights_convention  # noqa: E402

# The spec of each rank, and the small input both models run on here (the spec's own size
# would take seconds on two cores for the volume).
CASES = {1: ("densenet121_1d", (1, 96)), 2: ("densenet121", (1, 40, 40)), 3: ("densenet121_3d", (1, 32, 32, 32))}


def _network(dims: int):
    name, shape = CASES[dims]
    if dims == 2:  # the image spec is torchvision's (3 channels, 1000 classes): MONAI's is 1 → 2
        text = (SPECS / f"{name}.dense").read_text().replace("input 3x224x224", "input 1x224x224")
        text = text.replace("classes=1000", "classes=2").replace("expect ", "# expect ")
        network = densedsl.parse(text).network
    else:
        network = densedsl.load(SPECS / f"{name}.dense").network
    return network.with_input(shape)


def _monai(dims: int):
    torch.manual_seed(dims)
    model = monai_nets.DenseNet121(spatial_dims=dims, in_channels=1, out_channels=2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial BN statistics, so eval mode really uses them
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_parameters_equal_monai(dims):
    network = _network(dims)
    ours = analyze(network).params
    theirs = sum(p.numel() for p in monai_nets.DenseNet121(spatial_dims=dims, in_channels=1,
                                                           out_channels=2).parameters())
    assert ours == theirs


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_monai_weights_load_with_equal_outputs(dims):
    monai_model = _monai(dims)
    assert weights_convention(monai_model.state_dict()) == "MONAI"
    network = _network(dims)
    model = load_weights(build_model(network), monai_model.state_dict()).eval()
    assert model.weights_convention == "MONAI"
    x = torch.randn(2, *network.input, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), monai_model(x), rtol=1e-4, atol=1e-5)


def test_conventions_are_told_apart():
    model = build_model(_network(1))
    own = model.state_dict()
    assert weights_convention(own) == CONVENTIONS[0]
    legacy = {k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v for k, v in own.items()}
    assert weights_convention(legacy) == "torchvision (legacy keys)"
