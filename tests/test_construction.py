"""How `compile` makes a model's tensors: built on the meta device, given storage on the real one,
and filled once by `init_weights` (issue 15). Storage from `torch.empty` holds whatever memory
held before, so these tests poison it (NaN, or -7 for integer buffers) and check that every
parameter and buffer comes out as torchvision initialises it, for every op kind with a module."""

from __future__ import annotations

import math

import networks
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import densedsl
from densedsl.analysis.figures import analyze
from densedsl.ir import ops
from densedsl.nn import model as modules
from densedsl.nn.build import build_model

# Every norm (batch, group, instance, layer, none), biased convs, GELU, dropout, a post-activation
# block, a head with a hidden layer; the stem conv (64x3x7x7 = 9,408 weights) is big enough for
# a tight check of its standard deviation.
IMAGE = """network img {
    input 3x32x32
    stem {
        conv 64 kernel=7 stride=2 padding=3 bias=true
        norm
        relu
        maxpool kernel=3 stride=2 padding=1
    }
    dense layers=2 growth=4 bottleneck=2 norm=batch bias=true dropout=0.1
    transition compression=0.5 bias=true
    dense layers=2 growth=4 norm=group norm_groups=2 activation=gelu
    transition compression=0.5
    dense layers=2 growth=4 norm=instance order=post
    dense layers=2 growth=4 norm=layer
    dense layers=2 growth=4 norm=none
    head classes=3 hidden=[8] dropout=0.2
}
"""

# kind=linear on feature vectors: a linear stem, BatchNorm1d, layer norm, an unbiased block.
VECTORS = networks.MLP_EVERY_OP

SIGNAL = """network sig {
    input 2x64
    stem {
        conv 16 kernel=7 stride=2 padding=3
        norm
        relu
        maxpool kernel=3 stride=2 padding=1
    }
    dense layers=2 growth=4 bottleneck=2 norm=group norm_groups=2
    transition compression=0.5
    dense layers=2 growth=4
    head classes=2
}
"""

VOLUME = """network vol {
    input 1x8x8x8
    stem {
        conv 8 kernel=3 padding=1 bias=true
    }
    dense layers=2 growth=4 bottleneck=2
    transition compression=0.5
    dense layers=2 growth=4 norm=instance
    head classes=2 kernel=2 stride=2
}
"""

SPECS = {"image": IMAGE, "vectors": VECTORS, "signal": SIGNAL, "volume": VOLUME}
POISON_INT = -7


@pytest.fixture
def poisoned(monkeypatch):
    """Fresh storage that holds NaN (floats) or -7 (integers) instead of whatever malloc gives,
    so a tensor that init_weights misses cannot pass by luck."""
    materialise = modules._materialise

    def poisoning(model, device):
        materialise(model, device)
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                t.fill_(math.nan if t.is_floating_point() else POISON_INT)

    monkeypatch.setattr(modules, "_materialise", poisoning)


def fan_in(weight: torch.Tensor) -> int:
    return weight.shape[1] * math.prod(weight.shape[2:])


def check_initialised(model: nn.Module) -> set[str]:
    """Assert torchvision's init for every module with state; returns the names checked."""
    checked = set()
    for name, m in model.named_modules():
        own = {f"{name}.{k}" if name else k for k, _ in [*m.named_parameters(recurse=False),
                                                          *m.named_buffers(recurse=False)]}
        if isinstance(m, nn.modules.conv._ConvNd):
            w = m.weight.detach()
            assert torch.isfinite(w).all(), name
            if w.numel() >= 2000:  # kaiming_normal_: std sqrt(2 / fan_in), within 8% (>5 sigma)
                assert abs(w.std().item() / math.sqrt(2 / fan_in(w)) - 1) < 0.08, name
            if m.bias is not None:
                assert torch.equal(m.bias.detach(), torch.zeros_like(m.bias)), name
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert torch.equal(m.weight.detach(), torch.ones_like(m.weight)), name
            assert torch.equal(m.bias.detach(), torch.zeros_like(m.bias)), name
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean)), name
            assert torch.equal(m.running_var, torch.ones_like(m.running_var)), name
            assert m.num_batches_tracked.item() == 0, name
        elif isinstance(m, nn.GroupNorm):
            assert torch.equal(m.weight.detach(), torch.ones_like(m.weight)), name
            assert torch.equal(m.bias.detach(), torch.zeros_like(m.bias)), name
        elif isinstance(m, nn.Linear):
            w = m.weight.detach()  # torch's kaiming_uniform_(a=√5): |w| ≤ 1/√fan_in, not all 0
            bound = 1 / math.sqrt(m.in_features)
            assert torch.isfinite(w).all() and w.abs().max() <= bound and w.abs().max() > bound / 4, name
            if m.bias is not None:
                assert torch.equal(m.bias.detach(), torch.zeros_like(m.bias)), name
        else:
            assert not own, f"{name}: {type(m).__name__} has state this test does not check"
        checked |= own
    return checked


@pytest.mark.parametrize("kind", SPECS)
def test_every_parameter_and_buffer_is_initialised(kind, poisoned):
    model = densedsl.compile(SPECS[kind])
    assert check_initialised(model) == set(model.state_dict())


def test_the_specs_cover_every_op_kind_with_a_module():
    kinds = {op.kind for text in SPECS.values()
             for stage in analyze(densedsl.parse(text).network).lowered
             for op in ([o for layer in stage.layers for o in layer] if hasattr(stage, "layers") else stage.ops)}
    with_modules = {kind for kind, spec in ops.TABLE.items()
                    if type(spec).constructor is not ops.OpKind.constructor}
    assert with_modules <= kinds, with_modules - kinds


class _RandomFills(TorchFunctionMode):
    """Counts the random fills (normal_, uniform_) made on real (not meta) storage."""

    # The tensor methods, and the nn.init functions that hand themselves to the mode whole (the
    # mode is off while a function it sees runs, so nothing inside is counted twice).
    FILLS = {torch.Tensor.normal_: "normal_", nn.init.normal_: "normal_", nn.init.kaiming_normal_: "normal_",
             torch.Tensor.uniform_: "uniform_", nn.init.uniform_: "uniform_",
             nn.init.kaiming_uniform_: "uniform_"}

    def __init__(self):
        super().__init__()
        self.counts = {"normal_": 0, "uniform_": 0}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FILLS and (args[0] if args else kwargs["tensor"]).device.type != "meta":
            self.counts[self.FILLS[func]] += 1
        return func(*args, **kwargs)


def test_each_conv_weight_is_drawn_once():
    """torch's constructors draw kaiming_uniform_ for every conv weight, which torchvision's init
    then redraws as kaiming_normal_; densedsl draws each weight once (Linear: torch's weight and
    bias draw, the bias then zeroed, as torchvision keeps them)."""
    with _RandomFills() as fills:
        model = densedsl.compile(IMAGE)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert fills.counts == {"normal_": convs,
                            "uniform_": sum(1 + (m.bias is not None) for m in linears)}


def test_a_large_conv_is_kaiming_normal_not_torchs_uniform(poisoned):
    w = densedsl.compile(IMAGE).features.conv0.weight.detach()
    std = math.sqrt(2 / fan_in(w))
    # torch's own fill (kaiming_uniform_, a=√5) has std sqrt(1 / (3·fan_in)) and |w| ≤ √3 of it;
    # a normal sample of 9,408 values goes past 3 of its standard deviations.
    assert abs(w.std().item() / std - 1) < 0.05
    assert w.abs().max().item() > 3 * std


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_same_seed_gives_the_same_weights_and_another_seed_others():
    torch.manual_seed(3)
    first = state(densedsl.compile(IMAGE))
    torch.manual_seed(3)
    again = state(densedsl.compile(IMAGE))
    torch.manual_seed(4)
    other = state(densedsl.compile(IMAGE))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["features.conv0.weight"], other["features.conv0.weight"])
    assert not torch.equal(first["classifier.weight"], other["classifier.weight"])


def test_dtype_and_device_are_honoured(poisoned):
    model = build_model(densedsl.parse(IMAGE).network, dtype=torch.float64, device="cpu")
    for name, t in model.state_dict().items():
        assert t.device.type == "cpu", name
        assert t.dtype == (torch.long if name.endswith("num_batches_tracked") else torch.float64), name
    check_initialised(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert model.eval()(x).dtype == torch.float64


def test_meta_device_and_the_default_device_context():
    on_meta = build_model(densedsl.parse(IMAGE).network, device="meta")
    assert {t.device.type for t in on_meta.state_dict().values()} == {"meta"}
    with torch.device("meta"):  # no device given: the default device, as torch's constructors
        in_context = densedsl.compile(IMAGE)
    assert {t.device.type for t in in_context.state_dict().values()} == {"meta"}


def test_parameters_keep_requires_grad_and_stay_leaves():
    model = densedsl.compile(IMAGE)
    for name, p in model.named_parameters():
        assert isinstance(p, nn.Parameter) and p.requires_grad and p.is_leaf and p.grad_fn is None, name
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


class _Scale(nn.Module):
    """A module with a parameter and no reset_parameters: nothing knows how to initialise it."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.empty(3))


def test_a_module_with_state_and_no_initialiser_is_an_error():
    model = nn.Sequential(nn.Conv2d(2, 2, 1), _Scale())
    with pytest.raises(TypeError, match="cannot initialise _Scale"):
        modules.init_weights(model)


def test_a_module_with_reset_parameters_is_reset():
    norm = nn.LayerNorm(4)
    with torch.no_grad():
        norm.weight.fill_(math.nan)
    modules.init_weights(nn.Sequential(norm))
    assert torch.equal(norm.weight.detach(), torch.ones(4))


def test_the_exported_file_initialises_the_same_way():
    from densedsl.nn.export import python_source

    namespace: dict = {"__name__": "exported"}
    exec(compile(python_source(densedsl.parse(IMAGE).network), "exported.py", "exec"), namespace)
    exported = namespace["build"]()
    with torch.no_grad():  # poison, then the export's own init_weights must set everything again
        for t in [*exported.parameters(), *exported.buffers()]:
            t.fill_(math.nan if t.is_floating_point() else POISON_INT)
    namespace["init_weights"](exported)
    assert check_initialised(exported) == set(exported.state_dict())
