"""bench_compiler's reference is what densedsl's speed and memory are measured against: its
torchvision `memory_efficient=True` path must compute what its standard path computes, and must
really checkpoint (else the memory comparison would be against the standard model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from measure import saved_bytes  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench_compiler as bc  # noqa: E402


def tiny(memory_efficient: bool):
    torch.manual_seed(0)
    stem = [("conv0", torch.nn.Conv2d(3, 8, 3, 1, 1, bias=False))]
    return bc.RefDenseNet(stem, 8, (3, 2), 4, classes=5, memory_efficient=memory_efficient).train()


def step(model, x, y):
    x = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), x.grad, {k: p.grad for k, p in model.named_parameters()}


def test_torchvision_memory_efficient_reference_gives_the_standard_gradients(one_thread):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g)
    standard, efficient = tiny(False), tiny(True)
    efficient.load_state_dict(standard.state_dict())
    loss, x_grad, grads = step(standard, x, y)
    loss_e, x_grad_e, grads_e = step(efficient, x, y)
    # Same ops in the same order (the checkpoint recomputes them once more): equal to rounding.
    torch.testing.assert_close(loss_e, loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x_grad_e, x_grad, rtol=1e-5, atol=1e-6)
    assert grads_e.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_e[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_torchvision_memory_efficient_reference_really_checkpoints(one_thread):
    x = torch.randn(4, 3, 8, 8)
    assert saved_bytes(tiny(True), x) < 0.8 * saved_bytes(tiny(False), x)


def test_torchvision_memory_efficient_reference_moves_norm1_running_stats_twice(one_thread):
    """As in torchvision, the recomputation in backward updates norm1's running statistics a
    second time (bench_compiler's comment says so; densedsl's efficient mode does not)."""
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    standard, efficient = tiny(False), tiny(True)
    efficient.load_state_dict(standard.state_dict())
    step(standard, x, y)
    step(efficient, x, y)
    norm1 = "features.denseblock1.denselayer1.norm1.num_batches_tracked"
    assert standard.state_dict()[norm1] == 1 and efficient.state_dict()[norm1] == 2
    norm2 = "features.denseblock1.denselayer1.norm2.num_batches_tracked"
    assert efficient.state_dict()[norm2] == 1


def test_the_shared_path_test_without_its_compiling_test_agrees_outside_dynamo(one_thread, monkeypatch):
    """bench_dynamo's `densedsl shared` runs `DenseBlock._shareable_entries`, which is
    `_shared_entries` less its `compiling()` test: outside dynamo both must decide alike."""
    from densedsl.nn.model import DenseBlock

    monkeypatch.delenv("DENSEDSL_TRAINING_PATH", raising=False)
    block = DenseBlock(4, 2, 2, bottleneck=2)
    cases = [(True, True, torch.randn(2, 4, 4, 4)), (False, True, torch.randn(2, 4, 4, 4)),
             (True, False, torch.randn(2, 4, 4, 4)), (True, True, torch.randn(1, 4, 1, 1))]
    decided = []
    for training, grad, x in cases:
        block.train(training)
        with torch.set_grad_enabled(grad):
            ours = block._shareable_entries(x)
            theirs = block._shared_entries(x)
        assert (ours is None) == (theirs is None), (training, grad, tuple(x.shape))
        decided.append(ours is None)
    assert decided == [False, True, True, True]
    block.train()
    monkeypatch.setenv("DENSEDSL_TRAINING_PATH", "plain")
    assert block._shareable_entries(torch.randn(2, 4, 4, 4)) is None


TINY = """
network tiny_dynamo {
    input 3x8x8
    defaults growth=4 bottleneck=4 compression=0.5
    stem {
        conv 8
    }
    dense layers=2
    transition
    dense layers=2
    head classes=10
}
"""


@pytest.mark.slow
def test_bench_dynamo_runs_end_to_end_and_dynamo_sees_densedsl_as_one_graph(one_thread, monkeypatch):
    """The whole of bench_dynamo on a tiny network with the aot_eager backend (dynamo and AOT
    autograd, no C++ build): every part runs and renders, and densedsl's model is one graph
    without breaks in train mode, as torchvision's is; in eval mode its inference engine runs
    eagerly behind one break (`torch.compiler.disable`), which guards off would trace."""
    import bench_dynamo

    monkeypatch.setitem(bc.MODELS, "tiny_dynamo", {"spec": TINY, "batch": 4})
    monkeypatch.setattr(bc, "reference", lambda name, memory_efficient=False: bc.RefDenseNet(
        [("conv0", torch.nn.Conv2d(3, 8, 3, 1, 1, bias=False))], 8, (2, 2), 4, classes=10,
        memory_efficient=memory_efficient))
    result = bench_dynamo.bench_model("tiny_dynamo", 1, list(bench_dynamo.PARTS), lambda s: None, "aot_eager")
    for mode in ("train", "eval"):
        for impl in ("reference", "densedsl"):
            engine_break = int(impl == "densedsl" and mode == "eval")
            assert result["explain"][f"{impl} ({mode})"]["graphs"] == 1 + engine_break, (impl, mode)
            assert result["explain"][f"{impl} ({mode})"]["breaks"] == engine_break, (impl, mode)
    assert result["explain"]["densedsl, guards off (eval)"]["breaks"] > 1
    assert set(result["train"]["ratios"]) == set(bench_dynamo.TRAIN)
    assert set(result["eval"]["ratios"]) == set(bench_dynamo.INFER)
    assert set(result["train"]["cold"]) == {i for i in bench_dynamo.TRAIN if i.endswith("compiled")}
    meta = {"command": "python bench/bench_dynamo.py", "machine": "test", "threads": 1, "cxx": None,
            "backend": "aot_eager", "load_before": "0", "load_after": "0", "elapsed": 0.0, "rounds": 1}
    text = bench_dynamo.report({"tiny_dynamo": result}, meta)
    assert "| tiny_dynamo | training step: densedsl compiled / torchvision compiled" in text
    assert "| tiny_dynamo | inference: cold compile, densedsl compiled |" in text
    assert "| tiny_dynamo | densedsl, guards off (eval) |" in text


@pytest.mark.slow
def test_torch_compile_of_efficient_mode_trains_like_eager_efficient_mode(one_thread, monkeypatch):
    """torch.compile of a memory="efficient" model (aot_eager: dynamo and AOT autograd, where the
    path switch happens; inductor's numerics are test_training_paths' standard-mode test): its
    loss, gradients and BN running statistics are eager efficient mode's (the shared-storage
    Function there, the plain path under dynamo)."""
    import densedsl
    from densedsl.nn.build import build_model

    monkeypatch.delenv("DENSEDSL_TRAINING_PATH", raising=False)
    net = densedsl.parse(TINY).network
    torch.manual_seed(0)
    eager = build_model(net, memory="efficient").train()
    model = build_model(net, memory="efficient").train()
    model.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    loss, x_grad, grads = step(eager, x, y)
    loss_c, x_grad_c, _ = step(compiled, x, y)
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_grad_c, x_grad, rtol=1e-4, atol=1e-6)
    grads_c = {k: p.grad for k, p in model.named_parameters()}
    assert grads_c.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
    for (name, b), b_eager in zip(model.named_buffers(), eager.buffers()):
        torch.testing.assert_close(b, b_eager, rtol=1e-5, atol=1e-6, msg=name)
