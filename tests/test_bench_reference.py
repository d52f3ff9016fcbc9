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
