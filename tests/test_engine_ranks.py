"""The inference engine on 1-D signals and 3-D volumes (issue 25): attached, exact against the
plain path with every tensor random (conv biases, negative BN scales, post-order layers, a
non-dense `links=` table, features_only), and the caller's memory layout kept on the way out.
test_engine_exactness.py holds the same for 2-D images."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from networks import randomise_every_tensor  # noqa: E402
from twins import without_engine  # noqa: E402

import densedsl  # noqa: E402
from densedsl.nn import engine  # noqa: E402
from densedsl.nn.build import build_model  # noqa: E402
from densedsl.nn.model import DenseBlock  # noqa: E402

# Written for one axis; VOLUME below repeats every size along three. Stems of one input channel:
# the engine's channels_last input must not stay NCHW-strided (torch counts a 1-channel map as
# channels_last already).
SPECS = {
    # post-order layers: Conv → BN folds, with the convs' own biases
    "post_bias": """network n {
        input 1x{S}
        stem { conv 12 kernel=3 padding=1 bias=true; norm; relu; maxpool kernel=3 stride=2 padding=1 }
        dense layers=3 growth=6 order=post bias=true
        transition compression=0.5 bias=true
        dense layers=2 growth=6 order=post bias=true bottleneck=off
        head classes=5
    }""",
    # the paper's pre-order bottleneck layers: BN-ReLU-1x1 as `maximum` then one conv, with
    # bias; the transition pools before its 1x1 conv
    "pre_bias": """network n {
        input 2x{S}
        stem { conv 16 kernel=3 padding=1 bias=true }
        dense layers=4 growth=8 bottleneck=4 bias=true
        transition compression=0.5 bias=true
        dense layers=3 growth=8 bottleneck=2 bias=true
        head classes=4
    }""",
    # a table that is not DenseNet's: the engine gathers each layer's reads
    "log_links": """network n {
        input 1x{S}
        stem { conv 8 kernel=3 padding=1; norm; relu }
        dense layers=5 growth=4 links=log emit=log
        transition compression=0.5
        dense layers=3 growth=4
        head classes=3
    }""",
}
SIZE = {1: "24", 2: "10x10", 3: "10x10x10"}


def _network(name: str, rank: int):
    return densedsl.parse(SPECS[name].replace("{S}", SIZE[rank])).network


def _pair(network, *, negative_scales: bool, features_only: bool = False):
    """(the engine's model, the plain path's model) with the same random tensors."""
    torch.manual_seed(0)
    fast = build_model(network, features_only=features_only)
    randomise_every_tensor(fast, seed=7, negative_scales=negative_scales)
    plain = without_engine(build_model(network, features_only=features_only))
    plain.load_state_dict(fast.state_dict())
    return fast.eval(), plain.eval()


def _engines(model) -> list:
    return [m for m in model.modules() if getattr(m, "engine", None) is not None]


@pytest.mark.parametrize("rank", [1, 3], ids=["1d", "3d"])
@pytest.mark.parametrize("negative_scales", [False, True], ids=["positive-scales", "negative-scales"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_engine_equals_the_plain_path_with_every_tensor_random(name, negative_scales, rank):
    network = _network(name, rank)
    fast, plain = _pair(network, negative_scales=negative_scales)
    assert _engines(fast), "accelerate must attach the engine to a 1-D or 3-D model"
    biases = [t for k, t in plain.state_dict().items() if k.endswith("bias")]
    assert biases and all(t.abs().sum() > 0 for t in biases)  # nothing left at init's zero
    x = torch.randn(3, *network.input, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = plain(x)
        got = fast(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rank", [1, 3], ids=["1d", "3d"])
def test_the_engine_runs_every_block_of_a_rank(rank, monkeypatch):
    """The engine, not the modules' own forward, computes each block (a model `accelerate` left
    alone would still give the right answer: this fails then)."""
    network = _network("pre_bias", rank)
    fast, _ = _pair(network, negative_scales=False)
    blocks = [m for m in fast.modules() if isinstance(m, DenseBlock)]
    assert blocks and all(b.engine is not None for b in blocks)
    ran = []
    original = engine.InferenceEngine._block

    def block(self, b, x, lifted=False):
        ran.append(b)
        return original(self, b, x, lifted)

    monkeypatch.setattr(engine.InferenceEngine, "_block", block)
    with torch.no_grad():
        fast(torch.randn(2, *network.input))
    assert ran == blocks


@pytest.mark.parametrize("rank", [1, 3], ids=["1d", "3d"])
@pytest.mark.parametrize("name", ["post_bias", "log_links"])
def test_features_only_equals_the_plain_path(name, rank):
    network = _network(name, rank)
    fast, plain = _pair(network, negative_scales=True, features_only=True)
    assert _engines(fast)
    x = torch.randn(2, *network.input, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got, want = fast(x), plain(x)
    assert list(got) == list(want) and len(got) >= 2
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4)
        assert got[key].is_contiguous(), key  # the caller's layout, each map


def _channels_last(x):
    """`x` channels innermost, with the strides torch gives (none for a 3-D tensor)."""
    order = (0, *range(2, x.dim()), 1)
    back = sorted(range(x.dim()), key=order.__getitem__)
    return x.permute(order).contiguous().permute(back)


@pytest.mark.parametrize("rank", [1, 3], ids=["1d", "3d"])
def test_the_caller_layout_comes_back(rank):
    """Whatever layout the engine computes in, a contiguous input gives a contiguous map out;
    a channels-last input gives the same values."""
    network = densedsl.parse(SPECS["pre_bias"].replace("{S}", SIZE[rank]).replace(
        "        head classes=4\n", "")).network  # no head: the output is a map
    fast, plain = _pair(network, negative_scales=False)
    x = torch.randn(2, *network.input, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = plain(x)
        got = fast(x)
        assert got.dim() == rank + 2 and got.is_contiguous()
        atol = 1e-5 * float(want.abs().max())  # maps, not logits: values in the thousands
        torch.testing.assert_close(got, want, rtol=1e-4, atol=atol)
        torch.testing.assert_close(fast(_channels_last(x)), want, rtol=1e-4, atol=atol)
        # a batch of one: torch's own conv kernels below a size, oneDNN's in the engine
        torch.testing.assert_close(fast(x[:1]), plain(x[:1]), rtol=1e-4, atol=atol)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_one_channel_inputs_run_in_the_ranks_layout(rank, monkeypatch, one_thread):
    """torch counts a 1-channel NCHW map as channels_last already, so `contiguous(memory_format=)`
    keeps its strides and oneDNN then computes every later map NCHW (a 1-channel volume ran the
    whole network NCDHW). The engine's input has the channel innermost for real where the rank
    runs channels_last (engine.CHANNELS_INNER), and every block's buffer follows, on one thread
    too (where torch's own 1x1x1 conv kernel gives NCDHW back)."""
    network = _network("post_bias", rank)
    assert network.input[0] == 1
    fast, _ = _pair(network, negative_scales=False)
    seen = []
    original = engine.InferenceEngine._block

    def block(self, b, x, lifted=False):
        out = original(self, b, x, lifted)
        seen.append(engine._is_channels_last(out))
        return out

    monkeypatch.setattr(engine.InferenceEngine, "_block", block)
    with torch.no_grad():
        fast(torch.randn(2, *network.input))
    assert seen == [engine.CHANNELS_INNER[rank + 2]] * 2


def test_pointwise_is_a_one_by_one_kernel_in_every_rank():
    nn = torch.nn
    assert engine._pointwise(nn.Conv1d(4, 4, 1)) and engine._pointwise(nn.Conv3d(4, 4, 1))
    assert not engine._pointwise(nn.Conv1d(4, 4, 3)) and not engine._pointwise(nn.Conv3d(4, 4, (1, 1, 3)))
    assert not engine._pointwise(nn.Conv3d(4, 4, 1, padding=1))


@pytest.mark.parametrize("rank", [1, 3], ids=["1d", "3d"])
def test_every_rewrite_runs_in_every_rank(rank):
    """Exact outputs alone would not notice a rewrite that stopped applying (the module then runs
    as built): the fold cache names what ran. Post-order layers fold each BN into the conv
    before it; pre-order layers and the transition (pooled first) fold BN-ReLU into their 1x1
    conv."""
    post, pre = (_pair(_network(name, rank), negative_scales=False)[0] for name in ("post_bias", "pre_bias"))
    for model in (post, pre):
        with torch.no_grad():
            model(torch.randn(2, *model.input_shape))
    folds = {kind: {key for (k, key) in model.engine.folded._cache if k == kind}
             for kind, model in (("conv_bn", post), ("relu_conv", pre))}
    convs_before_norms = {id(m) for m in post.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)
                          and m.bias is not None and m is not post.features.transition1.conv}
    assert convs_before_norms and convs_before_norms <= folds["conv_bn"]
    # the fold's key: the layer's first norm (the chain it starts), the transition's conv
    fused = {id(m) for name, m in pre.named_modules() if name.endswith(".norm1")}
    fused.add(id(pre.features.transition1.conv))
    assert all(layer.conv1.kernel_size == (1,) * rank for layer in pre.modules() if hasattr(layer, "conv1"))
    assert len(fused) == 8 and fused <= folds["relu_conv"]  # 7 layers' bottlenecks, the transition


@pytest.mark.parametrize("rank", [1, 3], ids=["1d", "3d"])
def test_a_block_called_on_its_own_keeps_the_callers_rank(rank):
    """DenseBlock.forward calls the engine in the caller's rank and layout (a 1-D map is lifted
    only on the whole network's way in)."""
    network = _network("pre_bias", rank)
    fast, plain = _pair(network, negative_scales=False)
    x = torch.randn(2, 24, *(6,) * rank, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = fast.features.denseblock2(x)
        want = plain.features.denseblock2(x)
    assert got.dim() == rank + 2
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_lifted_signal_runs_the_modules_the_engine_does_not_know():
    """Modules the engine does not rewrite (a ReLU6, the layers' group norms) run on the lifted
    (N, C, 1, L) signal as (N, C, L) and are lifted back; the stem's average pool runs as a 1 x k
    2-D pool."""
    text = SPECS["post_bias"].replace("{S}", "24").replace(
        "norm; relu; maxpool kernel=3 stride=2 padding=1 }", "norm; relu6; avgpool kernel=3 stride=2 padding=1 }").replace(
        "dense layers=3 growth=6 order=post bias=true", "dense layers=3 growth=6 order=post bias=true norm=group norm_groups=2")
    assert "relu6" in text and "norm=group" in text
    network = densedsl.parse(text).network
    fast, plain = _pair(network, negative_scales=True)
    x = torch.randn(3, *network.input, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)


def test_cuda_layout_leaves_1d_and_3d_models_as_they_are():
    """train/evaluate lay a CUDA model out channels_last; torch's channels_last raises for a
    Conv3d's weights, so a 3-D network must be left alone (and a 2-D one still converted)."""
    from densedsl.training.loop import cuda_channels_last
    for rank in (1, 3):
        network = _network("pre_bias", rank)
        model = build_model(network)
        strides = [p.stride() for p in model.parameters()]
        assert cuda_channels_last(model, network.input) is model
        assert [p.stride() for p in model.parameters()] == strides
    network = _network("pre_bias", 2)
    model = cuda_channels_last(build_model(network), network.input)
    assert model.features.conv0.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.features.conv0.weight.is_contiguous()


GROUP_NORM_VOLUME = """
import torch, densedsl
from densedsl.nn.build import build_model
torch.set_num_threads(1)
text = '''network g {
    input 1x8x8x8
    stem { conv 8 kernel=3 padding=1; norm; relu }
    dense layers=2 growth=4 bottleneck=2 norm=group norm_groups=2
    transition compression=0.5
    dense layers=2 growth=4 norm=instance
    head classes=3
}'''
model = build_model(densedsl.parse(text).network).train()
x = torch.randn(4, 1, 8, 8, 8)
for fmt in (torch.contiguous_format, torch.channels_last_3d):
    model(torch.empty_like(x, memory_format=fmt).copy_(x)).sum().backward()
    conv = torch.nn.Conv3d(1, 8, 3, padding=1).to(memory_format=torch.channels_last_3d)
    torch.nn.GroupNorm(2, 8)(conv(x)).sum().backward()  # the 2-D crash's shape: conv → GroupNorm
print("trained")
"""


def test_group_norm_volumes_train_on_both_layouts():
    """torch 2.13's CPU GroupNorm backward on channels_last 2-D maps fed by a conv segfaults
    (model.py keeps group-norm models NCHW); the 3-D analogue, channels_last_3d, does not. A
    subprocess, so that a crash fails this test instead of ending the run."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", GROUP_NORM_VOLUME], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize("rank", [1, 2, 3], ids=["1d", "2d", "3d"])
def test_small_pointwise_convs_run_as_one_matrix_product(rank, monkeypatch):
    """A 1x1 conv over at most MATMUL_POSITIONS positions is addmm on the map's (positions,
    channels) view, given back channels-last (oneDNN's per-call cost dominates there); the
    output stays the plain path's, and above the limit the conv runs as before."""
    network = _network("pre_bias", rank)
    fast, plain = _pair(network, negative_scales=False)
    products = []
    original = engine._matmul_conv

    def counted(x, weight, bias):
        y = original(x, weight, bias)
        if y is not None:
            assert engine._is_channels_last(y) and y.shape[1] == weight.shape[0]
            products.append(x.shape)
        return y

    monkeypatch.setattr(engine, "_matmul_conv", counted)
    x = torch.randn(2, *network.input, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = plain(x)
        torch.testing.assert_close(fast(x), want, rtol=1e-4, atol=1e-4)
        # 7 bottlenecks and the transition's conv; in 3-D block 1's 2x10^3 map is above the limit
        assert len(products) == {1: 8, 2: 8, 3: 4}[rank]
        assert all(s.numel() // s[1] <= engine.MATMUL_POSITIONS for s in products)
        monkeypatch.setattr(engine, "MATMUL_POSITIONS", 0)
        products.clear()
        torch.testing.assert_close(fast(x), want, rtol=1e-4, atol=1e-4)
        assert products == []
