"""1-D networks train lifted on the CPU (densedsl/nn/lifted.py, issue 25): a signal (N, C, L) runs
as an (N, C, 1, L) channels_last image, each Conv1d as a 1 x k conv2d on its own weight's view,
each BatchNorm1d as batch_norm on the 4-D map, each 1-D pool as a 1 x k 2-D pool, the dense
blocks' shared buffer channels_last. Held to the plain path (torch.cat per layer, Conv1d, the
modules' own forward: DENSEDSL_TRAINING_PATH=plain on the model without its engine) with every
tensor random: outputs, input and parameter gradients, running statistics after each step, in
standard and efficient mode, for DenseNet's table, a links=log table, post-order layers,
features_only and a batch of one; in float64 to 1e-9, where any difference of function would
show. Float32 tolerances are test_training_paths.py's (the sum orders of NHWC kernels differ).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from networks import randomise_every_tensor  # noqa: E402
from twins import forward_backward as _run  # noqa: E402
from twins import without_engine  # noqa: E402
from torch import memory_format, nn  # noqa: E402

import densedsl  # noqa: E402
from densedsl.nn import lifted, shared  # noqa: E402
from densedsl.nn.build import build_model  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
_BatchNorm = nn.modules.batchnorm._BatchNorm

SPECS = {
    # the paper's bottleneck layers (the shared-storage Function), biased convs, a strided stem
    # conv and max pool, a transition's average pool
    "pre_bias": """network n {
        input 2x40
        stem { conv 12 kernel=7 stride=2 padding=3 bias=true; norm; relu; maxpool kernel=3 stride=2 padding=1 }
        dense layers=3 growth=6 bottleneck=2 bias=true
        transition compression=0.5 bias=true
        dense layers=2 growth=6
        head classes=5
    }""",
    # post-order layers: no shared buffer, each layer's modules one by one (conv → BN)
    "post_bias": """network n {
        input 1x32
        stem { conv 12 kernel=3 padding=1 bias=true; norm; relu; maxpool kernel=3 stride=2 padding=1 }
        dense layers=3 growth=6 order=post bias=true
        transition compression=0.5 bias=true
        dense layers=2 growth=6 order=post bias=true bottleneck=off
        head classes=5
    }""",
    # a table that is not DenseNet's: each layer gathers its reads (torch.cat of lifted maps)
    "log_links": """network n {
        input 1x24
        stem { conv 8 kernel=3 padding=1; norm; relu }
        dense layers=5 growth=4 links=log emit=log
        transition compression=0.5
        dense layers=3 growth=4
        head classes=3
    }""",
}


def _network(name: str, size: int | None = None):
    text = SPECS[name]
    if size is not None:
        text = text.replace("x40", f"x{size}").replace("x32", f"x{size}").replace("x24", f"x{size}")
    return densedsl.parse(text).network


def _pair(network, memory: str = "standard", *, features_only: bool = False, dtype=torch.float32):
    """(the compiled model, which trains lifted; the same tensors on a model without its engine)."""
    fast = build_model(network, memory=memory, features_only=features_only, dtype=dtype)
    assert any(getattr(m, "engine", None) is not None for m in fast.modules())
    randomise_every_tensor(fast, seed=7)
    plain = without_engine(build_model(network, memory=memory, features_only=features_only, dtype=dtype))
    plain.load_state_dict(fast.state_dict())
    return fast.train(), plain.train()


class _Seen:
    """Which 1-D convs ran as their own module and the layouts of the dense blocks' buffers."""

    def __init__(self, monkeypatch) -> None:
        self.conv1d = 0
        self.buffers: list[tuple[int, memory_format]] = []
        forward, buffer = nn.Conv1d.forward, shared.Buffer

        def conv1d(module, x):
            self.conv1d += 1
            return forward(module, x)

        def make_buffer(x, channels):
            holder = buffer(x, channels)
            self.buffers.append((holder.tensor.dim(), holder.memory_format))
            return holder

        monkeypatch.setattr(nn.Conv1d, "forward", conv1d)
        monkeypatch.setattr(shared, "Buffer", make_buffer)

    def clear(self) -> None:
        self.conv1d, self.buffers = 0, []


def _assert_same(plain, fast, want, got, rtol=RTOL, atol=ATOL) -> None:
    torch.testing.assert_close(got[0], want[0], rtol=rtol, atol=atol, msg=lambda m: f"output: {m}")
    torch.testing.assert_close(got[1], want[1], rtol=rtol, atol=atol, msg=lambda m: f"input gradient: {m}")
    assert got[2].keys() == want[2].keys()
    for k in want[2]:
        if want[2][k] is None:  # features_only: norm5 is not run
            assert got[2][k] is None, k
            continue
        assert got[2][k] is not None, f"{k}: no gradient reached the parameter"
        torch.testing.assert_close(got[2][k], want[2][k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
    fast_buffers = dict(fast.named_buffers())
    for k, v in plain.named_buffers():
        torch.testing.assert_close(fast_buffers[k], v, rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def _lifted_step(fast, plain, x, monkeypatch, seen: _Seen, **tolerance) -> None:
    """One step of each; the fast model must have run lifted (no Conv1d module forward) and the
    plain model unlifted."""
    seen.clear()
    want = _run(plain, x, True, monkeypatch)
    assert seen.conv1d > 0 and not seen.buffers
    seen.clear()
    got = _run(fast, x, False, monkeypatch)
    assert seen.conv1d == 0, "a Conv1d ran as its own module: the network did not train lifted"
    _assert_same(plain, fast, want, got, **tolerance)


@pytest.mark.parametrize("memory", ["standard", "efficient"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_lifted_training_equals_the_plain_path_with_every_tensor_random(name, memory, monkeypatch):
    network = _network(name)
    fast, plain = _pair(network, memory)
    seen = _Seen(monkeypatch)
    x = torch.randn(3, *network.input, generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # twice: the running statistics move once per step on both paths
        _lifted_step(fast, plain, x, monkeypatch, seen)
    assert all(int(m.num_batches_tracked) == 2 for m in fast.modules() if isinstance(m, _BatchNorm))
    if name == "pre_bias":  # DenseNet's table: both blocks through the shared buffer, lifted
        assert seen.buffers == [(4, torch.channels_last)] * 2


@pytest.mark.parametrize("memory", ["standard", "efficient"])
@pytest.mark.parametrize("name", ["pre_bias", "log_links"])
def test_lifted_training_is_the_same_function_in_float64(name, memory, monkeypatch):
    """In float64 the lifted ops and the plain ones agree to 1e-9: a differing op (a pool window,
    a padding, a momentum) would be far above that."""
    network = _network(name)
    fast, plain = _pair(network, memory, dtype=torch.float64)
    x = torch.randn(2, *network.input, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    seen = _Seen(monkeypatch)
    for _ in range(2):
        _lifted_step(fast, plain, x, monkeypatch, seen, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("memory", ["standard", "efficient"])
def test_features_only_trains_lifted_like_the_plain_path(memory, monkeypatch):
    network = _network("pre_bias")
    fast, plain = _pair(network, memory, features_only=True)
    seen = _Seen(monkeypatch)
    x = torch.randn(2, *network.input, generator=torch.Generator().manual_seed(3))
    _lifted_step(fast, plain, x, monkeypatch, seen)
    got = fast(x.clone().requires_grad_(True))
    assert list(got) == ["stem", "denseblock1", "denseblock2"]
    for key, value in got.items():
        assert value.dim() == 3 and value.is_contiguous(), key  # the caller's rank and layout


@pytest.mark.parametrize("memory", ["standard", "efficient"])
def test_a_batch_of_one_trains_lifted_like_the_plain_path(memory, monkeypatch):
    """With one signal a channel prefix of the (1, C, 1, L) buffer is still strided, and the
    statistics are over the length alone."""
    network = _network("pre_bias")
    fast, plain = _pair(network, memory)
    seen = _Seen(monkeypatch)
    _lifted_step(fast, plain, torch.randn(1, *network.input, generator=torch.Generator().manual_seed(4)),
                 monkeypatch, seen)


@pytest.mark.parametrize("name", ["pre_bias", "post_bias"])
def test_cumulative_batch_norm_momentum_trains_lifted_like_the_plain_path(name, monkeypatch):
    """momentum=None: each BN averages every batch it has seen, counted by num_batches_tracked."""
    network = _network(name)
    fast, plain = _pair(network)
    for model in (fast, plain):
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.momentum = None
    seen = _Seen(monkeypatch)
    for step in range(3):
        x = torch.randn(2, *network.input, generator=torch.Generator().manual_seed(10 + step))
        _lifted_step(fast, plain, x, monkeypatch, seen)


def test_eval_mode_with_a_gradient_runs_lifted_on_the_running_statistics(monkeypatch):
    """Eval mode with an input that needs a gradient (saliency, fine-tuning with frozen norms):
    the engine's inference does not apply, the lifted path does, and the statistics stay."""
    network = _network("post_bias")
    fast, plain = _pair(network)
    fast.eval(), plain.eval()
    before = {k: v.clone() for k, v in fast.state_dict().items()}
    seen = _Seen(monkeypatch)
    _lifted_step(fast, plain, torch.randn(2, *network.input), monkeypatch, seen)
    for k, v in fast.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_densenet121_1d_trains_lifted_like_the_plain_path(monkeypatch):
    """MONAI's DenseNet121(spatial_dims=1) as densedsl's spec: 120 convs, one SGD step each way.
    In float64: with every tensor random, 121 float32 layers put both paths' gradients up to a
    few percent off a float64 run (a BN bias's gradient of 16 values: plain 6%, lifted 13%)."""
    network = densedsl.parse((densedsl.load("specs/densenet121_1d.dense").source.text)
                             .replace("input 1x1024", "input 1x64").replace("expect ", "# expect ")).network
    fast, plain = _pair(network, dtype=torch.float64)
    x = torch.randn(2, *network.input, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    y = torch.tensor([0, 1])
    for model, path in ((plain, "plain"), (fast, "")):
        monkeypatch.setenv("DENSEDSL_TRAINING_PATH", path)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for (k, v), w in zip(plain.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(w, v, rtol=1e-9, atol=1e-9, msg=lambda m, k=k: f"{k}: {m}")


def test_the_plain_switch_a_2d_network_and_unknown_modules_train_unlifted(monkeypatch):
    network = _network("pre_bias")
    fast, _ = _pair(network)
    x = torch.randn(2, *network.input)
    assert lifted.trains_lifted(fast, x)
    monkeypatch.setenv("DENSEDSL_TRAINING_PATH", "plain")
    assert not lifted.trains_lifted(fast, x)
    monkeypatch.delenv("DENSEDSL_TRAINING_PATH")
    assert not lifted.trains_lifted(fast, x.unsqueeze(2))  # a 4-D map: not a signal
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the shared Function's rule
        assert not lifted.trains_lifted(fast, x)
    grouped = build_model(densedsl.parse(SPECS["log_links"].replace(
        "links=log emit=log", "norm=group norm_groups=2")).network).train()
    assert not lifted.trains_lifted(grouped, torch.randn(2, 1, 24))  # a GroupNorm: unknown here
    grouped(torch.randn(2, 1, 24)).sum().backward()  # and it trains as it is


def test_one_value_per_channel_is_refused_as_batch_norm_refuses_it(monkeypatch):
    network = densedsl.parse("""network n {
        input 3x1
        dense layers=2 growth=2
    }""").network
    fast, plain = _pair(network)
    monkeypatch.delenv("DENSEDSL_TRAINING_PATH", raising=False)
    for model in (plain, fast):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            model(torch.randn(1, 3, 1, requires_grad=True))
