"""The training paths (shared-storage concatenation with its fused BN-ReLU Function, channels_last
conversion on CPU, the Function's efficient mode) against the plain path (torch.cat per layer,
DENSEDSL_TRAINING_PATH=plain): same outputs, parameter and input gradients, and BN running
statistics, in standard and efficient mode, train and eval, on small networks of ranks 1, 2, 3.

Tolerance: the paths run the same ops, but the order of some float sums differs (the features'
gradients are summed into one buffer, and channels_last kernels reduce in another order), so
results agree to float32 rounding: rtol 1e-4, atol 1e-5 on outputs and gradients; buffers to 1e-5.
Where the plain path itself is further than that from the exact result (it happens: with one
thread, NCHW kernels on a batch of 3 put rank2_plain_layers' input gradient 3e-4 off a float64
run while the channels_last path is 1e-8 off), the shared path is held to the exact result
instead: it may be no further from a float64 run than the plain path is, plus that tolerance.
"""

from __future__ import annotations

import copy

import pytest
from measure import held_bytes
from twins import forward_backward as run

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import densedsl  # noqa: E402
from densedsl.nn import shared as concat  # noqa: E402
from densedsl.nn.model import DenseBlock, DenseNet  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5

NETS = {
    "rank2_bottleneck": ("3x12x12", "dense layers=3 growth=4 bottleneck=2\n transition\n"
                         " dense layers=2 growth=3\n"),
    "rank2_plain_layers": ("3x10x10", "dense layers=3 growth=5\n transition compression=0.5\n"
                           " dense layers=2 growth=4 bias=true\n"),
    "rank1": ("2x24", "dense layers=3 growth=4 bottleneck=2\n transition\n dense layers=2 growth=4\n"),
    "rank3": ("2x6x6x6", "dense layers=2 growth=3 bottleneck=2\n transition\n dense layers=2 growth=3\n"),
    "dropout_zero": ("3x8x8", "dense layers=3 growth=4 bottleneck=2 dropout=0\n"),
}


def network(key: str):
    shape, body = NETS[key]
    return densedsl.parse(f"network t {{\n input {shape}\n stem {{\n conv 6 kernel=3 padding=1\n }}\n"
                          f" {body} head classes=3\n}}\n").network


def zoo(name: str):
    return densedsl.load(f"specs/{name}.dense").network


def assert_same(model_a, model_b, a, b, exact=None) -> None:
    """b (the shared path) agrees with a (the plain path) to float32 rounding; given `exact` (the
    same run in float64: (results, model)), b may instead be no further from it than a is."""
    def close(u, v, msg, rtol=RTOL, atol=ATOL, truth=None):
        if truth is None:
            torch.testing.assert_close(v, u, rtol=rtol, atol=atol, msg=msg)
            return
        truth = truth.to(u.dtype if not u.is_floating_point() else torch.float64)
        if u.is_floating_point():
            allowed = (u.double() - truth).abs() + atol + rtol * truth.abs()
            worst = ((v.double() - truth).abs() - allowed).max().item()
            assert worst <= 0, f"{msg}: {worst:.3g} further from the float64 run than the plain path allows"
        else:
            torch.testing.assert_close(v, u, msg=msg)

    ra, mx = exact if exact is not None else ((None, None, None), None)
    close(a[0], b[0], "output", truth=ra[0])
    close(a[1], b[1], "input gradient", truth=ra[1])
    assert a[2].keys() == b[2].keys()
    for k in a[2]:
        close(a[2][k], b[2][k], k, truth=None if ra[2] is None else ra[2][k])
    exact_buffers = dict(mx.named_buffers()) if mx is not None else {}
    for (k, u), v in zip(model_a.named_buffers(), model_b.buffers()):
        close(u, v, k, rtol=1e-5, atol=1e-5, truth=exact_buffers.get(k))


def pair(net, memory: str) -> tuple[DenseNet, DenseNet]:
    torch.manual_seed(0)
    model = DenseNet(net, memory=memory)
    for m in model.modules():  # non-trivial affine parameters and statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model, copy.deepcopy(model)


def shared_calls(monkeypatch) -> list:
    calls: list = []
    original = concat.write_enter
    monkeypatch.setattr(concat, "write_enter", lambda *a, **k: calls.append(a[4]) or original(*a, **k))
    return calls


@pytest.mark.parametrize("memory", ["standard", "efficient"])
@pytest.mark.parametrize("key", list(NETS))
def test_training_paths_match_the_plain_path(key, memory, monkeypatch):
    net = network(key)
    plain, fast = pair(net, memory)
    exact_model = copy.deepcopy(plain).double()
    x = torch.randn(3, *net.input, generator=torch.Generator().manual_seed(1))
    calls = shared_calls(monkeypatch)
    for _ in range(2):  # twice: the running statistics move once per step on both paths
        exact = run(exact_model.train(), x.double(), True, monkeypatch)
        calls.clear()
        expected = run(plain.train(), x, True, monkeypatch)
        assert not calls
        got = run(fast.train(), x, False, monkeypatch)
        assert calls, "the shared-storage path was not taken"
        assert_same(plain, fast, expected, got, exact=(exact, exact_model))
    assert all(b.num_batches_tracked.item() == 2 for b in fast.modules()
               if isinstance(b, nn.modules.batchnorm._BatchNorm))
    expected, got = run(plain.eval(), x, True, monkeypatch), run(fast.eval(), x, False, monkeypatch)
    assert_same(plain, fast, expected, got)


@pytest.mark.parametrize("memory", ["standard", "efficient"])
def test_zoo_spec_matches_the_plain_path(memory, monkeypatch):
    net = zoo("tiny_digits")
    plain, fast = pair(net, memory)
    x = torch.randn(4, *net.input, generator=torch.Generator().manual_seed(2))
    assert_same(plain, fast, run(plain.train(), x, True, monkeypatch), run(fast.train(), x, False, monkeypatch))


def test_cumulative_batch_norm_momentum_matches(monkeypatch):
    plain, fast = pair(network("rank2_bottleneck"), "standard")
    for model in (plain, fast):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = None
    x = torch.randn(2, 3, 12, 12)
    for _ in range(3):
        assert_same(plain, fast, run(plain.train(), x, True, monkeypatch), run(fast.train(), x, False, monkeypatch))


def test_channels_last_input_gives_the_same_values_and_an_nchw_headless_output(monkeypatch):
    net = densedsl.parse("network h {\n input 3x8x8\n stem {\n conv 6\n }\n dense layers=2 growth=4\n}\n").network
    plain, fast = pair(net, "standard")
    x = torch.randn(2, 3, 8, 8)
    expected = run(plain.train(), x, True, monkeypatch)
    got = run(fast.train(), x, False, monkeypatch)
    assert_same(plain, fast, expected, got)
    monkeypatch.delenv("DENSEDSL_TRAINING_PATH", raising=False)
    assert fast.train()(x).is_contiguous()  # converted back: what users fed is what they get
    got_cl = run(fast, x.contiguous(memory_format=torch.channels_last), False, monkeypatch)
    torch.testing.assert_close(got_cl[0], expected[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("efficient", [False, True])
def test_shared_block_gradients_are_exact_in_float64(efficient):
    """gradcheck against finite differences: the summed gradient buffer is right."""
    torch.manual_seed(0)
    block = DenseBlock(3, 3, 2, bottleneck=2, memory_efficient=efficient).double().train()
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert block._shared_entries(x) is not None
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5)


def test_a_post_activation_block_keeps_the_plain_path():
    block = DenseBlock(4, 2, 3, order="post").train()
    assert block._shared_entries(torch.randn(1, 4, 4, 4, requires_grad=True)) is None


def test_no_grad_and_plain_switches_keep_the_plain_path(monkeypatch):
    block = DenseBlock(4, 2, 3, bottleneck=2).train()
    x = torch.randn(1, 4, 4, 4)
    assert block._shared_entries(x) is not None
    with torch.no_grad():
        assert block._shared_entries(x) is None
    block.shared_storage = False
    assert block._shared_entries(x) is None
    block.shared_storage = True
    monkeypatch.setenv("DENSEDSL_TRAINING_PATH", "plain")
    assert block._shared_entries(x) is None


def test_writing_into_an_efficient_blocks_output_is_refused_in_backward():
    torch.manual_seed(0)
    block = DenseBlock(3, 2, 2, bottleneck=2, memory_efficient=True).train()
    out = block(torch.randn(2, 3, 4, 4, requires_grad=True))
    out.mul_(2)  # autograd accepts it (mark_dirty); the layers' recomputation would read it
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_state_dict_keys_are_the_plain_paths():
    net = network("rank2_bottleneck")
    model = DenseNet(net)
    before = list(model.state_dict())
    run(model.train(), torch.randn(2, *net.input), False, pytest.MonkeyPatch())
    assert list(model.state_dict()) == before
    assert all(t.is_contiguous() for t in model.state_dict().values())


@pytest.mark.parametrize("release", [False, True])
def test_train_returns_freed_memory_to_the_system_only_when_asked(release, monkeypatch, tmp_path):
    # it costs speed (1.4x slower efficient steps measured: BENCHMARKS.md), so never by default
    from densedsl.training import train as t
    calls: list = []
    monkeypatch.setattr(t, "return_freed_memory", lambda: calls.append(release) or True)
    t.train("specs/tiny_digits.dense", data="synthetic:32", epochs=1, batch_size=16, memory="efficient",
            device="cpu", out=tmp_path / "run", progress=False, max_steps=1, release_memory=release)
    assert calls == ([True] if release else [])


def test_the_cli_passes_release_memory(monkeypatch, tmp_path):
    from densedsl import cli
    from densedsl.training import train as t
    seen: list = []
    monkeypatch.setattr(t, "train", lambda *a, **k: seen.append(k["release_memory"]))
    for flags, expected in (([], False), (["--release-memory"], True)):
        cli.main(["train", "specs/tiny_digits.dense", "--data", "synthetic:32", "--out", str(tmp_path / "r"), *flags])
        assert seen.pop() is expected


def test_return_freed_memory_leaves_a_users_setting_alone(monkeypatch):
    from densedsl.training.train import return_freed_memory
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert return_freed_memory() is False


@pytest.mark.slow
def test_torch_compile_trains_and_infers_like_eager(monkeypatch):
    """torch.compile(model) in train mode (outputs, gradients, BN statistics) and in eval mode
    gives eager's values. Under dynamo the blocks take the plain path (`modules.compiling()`);
    with that guard removed this test still passes (dynamo also traces the Function), so it checks
    that compile works, not which path it takes."""
    net = network("rank2_bottleneck")
    eager, model = pair(net, "standard")
    compiled = torch.compile(model)
    x = torch.randn(2, *net.input)
    assert_same(eager, model, run(eager.train(), x, False, monkeypatch), run(compiled.train(), x, False, monkeypatch))
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(x), eager.eval()(x), rtol=RTOL, atol=ATOL)




def test_efficient_memory_model_is_what_the_shared_path_keeps():
    """The analysis' efficient mode, less what it adds for backward's peak (`MemoryModel.
    transient`), against what the shared-storage path keeps: features only once (the block's
    buffer) and each layer's bottleneck conv output; the BN-ReLU-conv tail after it keeps
    nothing more."""
    from densedsl.analysis.figures import analyze
    net = densedsl.parse("network m {\n input 3x16x16\n stem {\n conv 8\n }\n dense layers=6 growth=4"
                         " bottleneck=2\n transition\n dense layers=6 growth=4\n head classes=2\n}\n").network
    a = analyze(net)
    torch.manual_seed(0)
    # held_bytes: the transition is a checkpointed region, whose tensors saved-tensor hooks miss
    measured = held_bytes(DenseNet(net, memory="efficient").train(), torch.randn(2, *net.input))
    predicted = a.memory_model("efficient").bytes(2, "float32", kept=True)
    assert abs(predicted - measured) / measured < 0.05


@pytest.mark.parametrize("memory", ["standard", "efficient"])
def test_a_batch_of_one_matches_the_plain_path(memory, monkeypatch):
    """With one image a channel slice of the buffer is contiguous: the staged copy must still be
    a copy (a view would be written by the next layer)."""
    net = network("rank2_bottleneck")
    plain, fast = pair(net, memory)
    fast.train_channels_last = False  # NCHW: the slice of a batch of one is contiguous
    x = torch.randn(1, *net.input)
    assert_same(plain, fast, run(plain.train(), x, True, monkeypatch), run(fast.train(), x, False, monkeypatch))


def test_one_value_per_channel_is_refused_as_batch_norm_refuses_it(monkeypatch):
    monkeypatch.delenv("DENSEDSL_TRAINING_PATH", raising=False)
    block = DenseBlock(3, 2, 2).train()  # no bottleneck: no nn.BatchNorm2d after the Function
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        block(torch.randn(1, 3, 1, 1, requires_grad=True))


def test_efficient_mode_reuses_one_scratch_per_block_that_autograd_never_saves(monkeypatch):
    """Efficient mode stages each layer's concatenation and BN-ReLU output, and its tail's
    BN-ReLU output, into one block-wide scratch allocation (fewer large malloc/free cycles: BENCHMARKS.md, training section): the same
    storage for every layer in forward and again in backward, released between the two and after
    backward, and never among the tensors autograd saves (the next layer overwrites it)."""
    monkeypatch.delenv("DENSEDSL_TRAINING_PATH", raising=False)
    torch.manual_seed(0)
    block = DenseBlock(3, 4, 2, bottleneck=2, memory_efficient=True).train()
    calls: list = []
    original = concat.Buffer.scratch

    def record(holder, width):
        x, y = original(holder, width)
        calls.append((holder, x, y))  # keeps the storage alive: its address is never reused here
        return x, y

    monkeypatch.setattr(concat.Buffer, "scratch", record)
    saved: set = set()
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.add(t.untyped_storage().data_ptr()) or t, lambda t: t):
        out = block(torch.randn(2, 3, 5, 5, requires_grad=True))
    holder = calls[0][0]
    storages = {t.untyped_storage().data_ptr() for _, x, y in calls for t in (x, y)}
    # each layer's entry, then its BN-ReLU-conv tail (bottleneck 2 x growth 2: 4 channels)
    assert [x.shape[1] for _, x, _ in calls] == [3, 4, 5, 4, 7, 4, 9, 4]
    assert len(storages) == 1 and holder._scratch is None
    assert not storages & saved
    forward_calls = len(calls)
    out.sum().backward()
    backward = calls[forward_calls:]
    assert holder._scratch is None
    assert len({t.untyped_storage().data_ptr() for _, x, y in backward for t in (x, y)}) == 1
    # in reverse, each layer's tail first; one allocation (twice the block's output) fits all
    assert [x.shape[1] for _, x, _ in backward] == [4, 9, 4, 7, 4, 5, 4, 3]


def test_efficient_mode_trains_a_bfloat16_model_like_the_plain_path(monkeypatch):
    """A model cast to bfloat16: the scratch takes the input's dtype, BN's saved statistics its
    running statistics' (what aten's batch norm returns)."""
    net = network("rank2_bottleneck")
    plain, fast = (m.to(torch.bfloat16) for m in pair(net, "efficient"))
    x = torch.randn(3, *net.input).to(torch.bfloat16)
    calls = shared_calls(monkeypatch)
    expected, got = run(plain.train(), x, True, monkeypatch), run(fast.train(), x, False, monkeypatch)
    assert calls
    torch.testing.assert_close(got[0], expected[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got[1], expected[1], rtol=5e-2, atol=5e-2)
