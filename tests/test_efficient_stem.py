"""Memory-efficient mode recomputes the stem's and the transitions' norm, activation and pooling in
backward (they keep only their conv outputs, and the input they need anyway), as the dense layers
do: fewer saved bytes than standard mode there, the same gradients and the same running
statistics after a step, for maps of every rank."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import cast

import pytest
import torch

import densedsl
from densedsl.nn.build import build_model
from densedsl.nn.model import DenseLayer, DenseNet, Transition

sys.path.insert(0, str(Path(__file__).parent))
from measure import held_bytes  # noqa: E402

SPEC = """network s {{
    input {input}
    stem {{
        conv 8 kernel=7 stride=2 padding=3
        norm
        relu
        maxpool kernel=3 stride=2 padding=1
    }}
    dense layers=2 growth=4 bottleneck=2
    transition compression=0.5
    dense layers=2 growth=4
    head classes=3
}}
"""
INPUTS = {1: "2x64", 2: "2x24x24", 3: "1x12x12x12"}




def _pair(rank: int) -> tuple[DenseNet, DenseNet, torch.Tensor]:
    network = densedsl.parse(SPEC.format(input=INPUTS[rank])).network
    torch.manual_seed(0)
    standard, efficient = (cast(DenseNet, build_model(network, memory=m)).train() for m in ("standard", "efficient"))
    efficient.load_state_dict(standard.state_dict())
    return standard, efficient, torch.randn(2, *network.input)


def _recompute_dense_layers_only(model: DenseNet) -> None:
    """Efficient mode as it was before the stem and the transitions recomputed."""
    model.set_grad_checkpointing(False)
    for m in model.modules():
        if isinstance(m, DenseLayer):
            m.memory_efficient = True


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_stem_and_transitions_keep_only_their_conv_outputs(rank):
    _, efficient, x = _pair(rank)
    features = efficient.features
    with torch.no_grad():
        conv = features.conv0(x)
        pooled = features.pool0(conv)
        transition_in = features.denseblock1(pooled)
    # what efficient mode no longer keeps: the stem's BN-ReLU output (in place: one tensor) and
    # its max-pool indices (int64), the transition's BN-ReLU output
    dropped = conv.numel() * 4 + pooled.numel() * 8 + transition_in.numel() * 4
    now = held_bytes(efficient, x)
    _recompute_dense_layers_only(efficient)
    before = held_bytes(efficient, x)
    assert before - now >= dropped


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_efficient_stem_and_transitions_train_as_standard(rank):
    standard, efficient, x = _pair(rank)
    for model in (standard, efficient):
        torch.manual_seed(1)
        model(x).square().sum().backward()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
    grads = dict(standard.named_parameters())
    for name, p in efficient.named_parameters():
        assert p.grad is not None and torch.allclose(p.grad, grads[name].grad, rtol=1e-5, atol=1e-7), name
    reference = standard.state_dict()
    for name, value in efficient.state_dict().items():  # weights, running statistics, counts
        assert torch.allclose(value.float(), reference[name].float(), rtol=1e-5, atol=1e-7), name


def test_recomputation_moves_running_statistics_once():
    """The stem's and the transition's BN are recomputed in backward; their running statistics and
    batch counts must move once per step, as in standard mode."""
    standard, efficient, x = _pair(3)
    for model in (standard, efficient):
        model(x).sum().backward()
    for name in ("norm0", "transition1.norm"):
        got, want = efficient.features.get_submodule(name), standard.features.get_submodule(name)
        assert torch.equal(got.running_mean, want.running_mean), name
        assert torch.equal(got.running_var, want.running_var), name
        assert int(got.num_batches_tracked) == int(want.num_batches_tracked) == 1, name


def test_set_grad_checkpointing_switches_the_stem_and_transitions():
    _, efficient, x = _pair(2)
    efficient.set_grad_checkpointing(False)
    assert not efficient.features.memory_efficient
    assert not any(m.memory_efficient for m in efficient.modules() if isinstance(m, (Transition, DenseLayer)))
    off = held_bytes(efficient, x)
    efficient.set_grad_checkpointing(True)
    assert held_bytes(efficient, x) < off
