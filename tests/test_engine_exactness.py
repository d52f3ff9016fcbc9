"""The inference engine's rewrites (folded norms, the BN-ReLU-1x1 `maximum` form, zero-copy
blocks, channels_last buffers) are exact for every value a trained model can hold, not only for
the values init leaves: conv and linear biases, negative norm scales, running statistics
(issue 21: a broken conv-bias fold used to survive every targeted test, because init zeroes
conv biases and the tests randomised only the norms)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from networks import randomise_every_tensor  # noqa: E402

import densedsl  # noqa: E402
from densedsl.nn.build import build_model  # noqa: E402

SPECS = {
    # post-order layers: Conv → BN folds, with the convs' own biases
    "post_bias": """network n {
        input 3x20x20
        stem { conv 12 kernel=3 padding=1 bias=true; norm; relu }
        dense layers=3 growth=6 order=post bias=true
        transition compression=0.5 bias=true
        dense layers=2 growth=6 order=post bias=true bottleneck=off
        head classes=5
    }""",
    # the paper's pre-order bottleneck layers: BN-ReLU-1x1 as `maximum` then one conv, with bias
    "pre_bias": """network n {
        input 3x20x20
        stem { conv 16 kernel=3 padding=1 bias=true }
        dense layers=4 growth=8 bias=true
        transition compression=0.5 bias=true
        dense layers=3 growth=8 bias=true
        head classes=4
    }""",
    # torchvision's layout (bias-free convs), where only norms and the classifier carry shifts
    "torchvision": """network n {
        input 3x32x32
        stem { conv 16 kernel=7 stride=2 padding=3; norm; relu; maxpool kernel=3 stride=2 padding=1 }
        dense layers=3 growth=8
        transition
        dense layers=2 growth=8
        head classes=10
    }""",
}


@pytest.mark.parametrize("negative_scales", [False, True], ids=["positive-scales", "negative-scales"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_engine_equals_the_plain_path_with_every_tensor_random(name, negative_scales):
    network = densedsl.parse(SPECS[name]).network
    torch.manual_seed(0)
    plain = build_model(network, engine=False)
    randomise_every_tensor(plain, seed=7, negative_scales=negative_scales)
    fast = build_model(network)
    fast.load_state_dict(plain.state_dict())
    assert any(getattr(m, "engine", None) is not None for m in fast.modules()), "the engine must apply"
    biases = [t for k, t in plain.state_dict().items() if k.endswith("bias")]
    assert biases and all(t.abs().sum() > 0 for t in biases)  # nothing left at init's zero
    x = torch.randn(3, *network.input, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = plain.eval()(x)
        for layout in (torch.contiguous_format, torch.channels_last):
            got = fast.eval()(x.contiguous(memory_format=layout))
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
