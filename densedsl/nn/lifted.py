"""Lifted 1-D maps: a signal (N, C, L) runs as an (N, C, 1, L) channels_last image.

oneDNN's conv2d on NHWC is 1.5-2.4x faster on this CPU than conv1d (on NCL, and slower still on
N, L, C strides) for DenseNet's 3-wide and 1x1 convs, so 1-D networks run "lifted": every Conv1d
as a conv2d with its weight viewed (O, I, 1, k) (a view: the gradient reaches the Conv1d's own
parameter and the state_dict does not change), every BatchNorm1d as batch_norm on the 4-D map
(the same statistics per channel: the batch and the length are the reduced axes either way),
every 1-D pool as its (1 x k) 2-D pool, and the result squeezed back to the caller's (N, C, L).

Two users: the inference engine (`engine.py` imports the layout helpers and the lifted ops) and
training, `features` / `features_only` below, which the engine's `lifts` lets the model call
(`DenseNet.forward_features`, `DenseNetFeatures.forward`) when a 1-D CPU map needs a gradient or
the model trains. Training lifted keeps every path of `model.py`: the shared-storage Function
(`shared.py`, its buffer channels_last), efficient mode's checkpointed layers, a `links=` table's
gathers, and running statistics updated once per step. DenseNet-121 1-D, batch 16, 1x1024, one
SGD step: about 1.2x MONAI's (0.97x unlifted; docs/compiler.md has the command and numbers).

A network with a module this file does not know (a group norm, an adaptive pool in the features)
trains unlifted: its figures stay exact, it is only not faster.
"""

from __future__ import annotations

import functools
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..ir import lowering
from . import shared
from .model import (DenseBlock, DenseLayer, DenseNet, DenseNetFeatures, Transition, _autocasting, _checkpointed,
                    _Features, _recomputes, compiling, plain_training, run_block)

# --- layouts ------------------------------------------------------------------------------------

def channels_inner_order(dim: int) -> tuple[int, ...]:
    return (0, *range(2, dim), 1)


def is_channels_last(x: Tensor) -> bool:
    """Channels innermost and not plain contiguous (a map of dim 3, 4 or 5)."""
    return (3 <= x.dim() <= 5 and not x.is_contiguous()
            and x.permute(channels_inner_order(x.dim())).is_contiguous())


def empty(shape: tuple[int, ...], like: Tensor, channels_inner: bool, dtype: torch.dtype | None = None) -> Tensor:
    dtype = like.dtype if dtype is None else dtype
    if not channels_inner:
        return torch.empty(shape, dtype=dtype, device=like.device)
    order = channels_inner_order(len(shape))
    back = sorted(range(len(shape)), key=order.__getitem__)
    return torch.empty([shape[i] for i in order], dtype=dtype, device=like.device).permute(back)


def channels_last(x: Tensor) -> Tensor:
    """`x` with channels innermost (N, *spatial, C in memory; torch's channels_last(_3d) for 4-D
    and 5-D, strides torch has no memory_format for in 3-D). Always real channels_last strides:
    with one channel torch's `contiguous(memory_format=...)` keeps NCHW strides (it counts them
    as channels_last), and oneDNN then lays every later map out NCHW (a 1-channel volume or
    image ran the whole network NCDHW). A copy autograd follows when `x` needs one."""
    if x.stride(1) == 1 and x.permute(channels_inner_order(x.dim())).is_contiguous():
        return x
    return empty(tuple(x.shape), x, True).copy_(x)


def same_layout(y: Tensor, x: Tensor) -> Tensor:
    """`y` channels_last where `x` was: CPU's avg_pool3d and max_pool1d give channels_last
    input back NCDHW / NCL, and every later conv would then run NCDHW (or reorder)."""
    if y.dim() == x.dim() and y.size(1) > 1 and is_channels_last(x) and not is_channels_last(y):
        return channels_last(y)
    return y


def pair1(v) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, tuple) else (v,)


def lift(x: Tensor) -> Tensor:
    """(N, C, L) as (N, C, 1, L) with channels innermost."""
    return channels_last(x.unsqueeze(2))


def unlift(y: Tensor, x: Tensor) -> Tensor:
    """A lifted result in the caller's rank and, for a contiguous caller's map, layout."""
    y = y.squeeze(2)
    if x.is_contiguous() and not y.is_contiguous():
        return y.contiguous()
    return y


def conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride=1, padding=0, dilation=1,
         groups: int = 1) -> Tensor:
    """A 1-D conv on a lifted map, as a 1 x k conv2d (a 1-D weight with channels innermost is,
    unsqueezed, a channels_last 2-D one: no copy)."""
    return F.conv2d(x, weight.unsqueeze(2), bias, (1, *pair1(stride)),
                    padding if isinstance(padding, str) else (0, *pair1(padding)), (1, *pair1(dilation)), groups)


def pool(m: nn.Module, x: Tensor) -> Tensor | None:
    """A 1-D max or average pool on a lifted map as its (1 x k) 2-D pool; None for any other module."""
    if isinstance(m, nn.MaxPool1d) and not m.return_indices:
        return F.max_pool2d(x, (1, *pair1(m.kernel_size)), (1, *pair1(m.stride)), (0, *pair1(m.padding)),
                            (1, *pair1(m.dilation)), m.ceil_mode)
    if isinstance(m, nn.AvgPool1d):
        return F.avg_pool2d(x, (1, *pair1(m.kernel_size)), (1, *pair1(m.stride)), (0, *pair1(m.padding)),
                            m.ceil_mode, m.count_include_pad)
    return None


def unlifted(m: nn.Module, x: Tensor) -> Tensor:
    """A 1-D module on a lifted (N, C, 1, L) map: run on (N, C, L), lifted back, the layout kept."""
    return same_layout(m(x.squeeze(2)).unsqueeze(2), x)


# --- training -----------------------------------------------------------------------------------

# Modules that act per value, whatever the rank of their map
_POINTWISE = (nn.ReLU, nn.Dropout, nn.SiLU, nn.GELU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Identity)
_CONTAINERS = (nn.Sequential, DenseBlock, DenseLayer, Transition)


def _known(m: nn.Module) -> bool:
    """A module the lifted training path runs exactly as the module would on (N, C, L)."""
    if isinstance(m, _CONTAINERS) or type(m) in _POINTWISE or type(m) is nn.BatchNorm1d:
        return True
    if type(m) is nn.Conv1d:
        return m.padding_mode == "zeros"
    return (type(m) is nn.MaxPool1d and not m.return_indices) or type(m) is nn.AvgPool1d


def trains_lifted(model: DenseNet | DenseNetFeatures, x: Tensor) -> bool:
    """Whether `model`'s features run lifted for `x`, a map the inference engine does not take (it
    trains, or a gradient is needed): a float (N, C, L) signal on the CPU, a 1-D network of
    modules this file knows, eagerly (a tracer, torch.compile and DENSEDSL_TRAINING_PATH=plain
    see the modules' own forward), without autocast (as the shared-storage Function)."""
    if compiling() or not (x.dim() == 3 and x.device.type == "cpu" and x.is_floating_point()):
        return False  # (a tracer first: dynamo then never reads the modules below)
    if plain_training() or _autocasting(x):
        return False
    modules = list(model.features.modules())
    return any(type(m) is nn.Conv1d for m in modules) and all(_known(m) for m in modules)


def _batch_norm(m: nn.BatchNorm1d, x: Tensor, recomputing: bool) -> Tensor:
    """nn.BatchNorm1d's forward on a lifted map (torch's `_BatchNorm.forward`, whose input check
    refuses 4-D). In a recomputed layer's backward the running statistics were updated by the
    forward already: momentum 0, as `DenseLayer._layer`."""
    if recomputing and m.training:
        return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, True, 0.0, m.eps)
    factor = 0.0 if m.momentum is None else m.momentum
    if m.training and m.track_running_stats and m.num_batches_tracked is not None:
        m.num_batches_tracked.add_(1)
        if m.momentum is None:  # a cumulative moving average
            factor = 1.0 / float(m.num_batches_tracked)
    batch_stats = m.training or (m.running_mean is None and m.running_var is None)
    keep = not m.training or m.track_running_stats
    return F.batch_norm(x, m.running_mean if keep else None, m.running_var if keep else None, m.weight,
                        m.bias, batch_stats, factor, m.eps)


def _op(m: nn.Module, x: Tensor, recomputing: bool = False) -> Tensor:
    """One module of the features on a lifted map (`_known`'s modules; a container runs its
    children)."""
    if isinstance(m, DenseBlock):
        return _block(m, x)
    if isinstance(m, Transition):  # efficient mode's checkpointed region, as `Transition.forward`
        if _recomputes(m.memory_efficient, x, m.children()):
            return _checkpointed(m, functools.partial(_chain, list(m), owner=m), x)
        return _chain(list(m), x, owner=m)
    if isinstance(m, _Features) and m.stem_length:  # the stem's region, as `_Features.forward`
        stem, rest = list(m)[:m.stem_length], list(m)[m.stem_length:]
        if _recomputes(m.memory_efficient, x, stem):
            x = _checkpointed(m, functools.partial(_chain, stem, owner=m), x)
        else:
            x = _chain(stem, x, recomputing)
        return _chain(rest, x, recomputing)
    if isinstance(m, nn.Sequential):  # any other chain
        return _chain(list(m), x, recomputing)
    if isinstance(m, nn.Conv1d):
        return conv(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(m, nn.BatchNorm1d):
        return _batch_norm(m, x, recomputing)
    pooled = pool(m, x)
    return m(x) if pooled is None else pooled  # otherwise pointwise (`_known`)


def _chain(modules: list[nn.Module], x: Tensor, recomputing: bool = False, *, owner: nn.Module | None = None) -> Tensor:
    """`modules` in order on a lifted map; with an `owner`, recomputing while its checkpoint
    recomputes (`_Recomputing` marks it), so BN's running statistics move once."""
    recomputing = recomputing or bool(getattr(owner, "_recomputing", False))
    for child in modules:
        x = _op(child, x, recomputing)
    return x


def _layer(layer: DenseLayer, *inputs: Tensor) -> Tensor:
    """`DenseLayer._layer` lifted."""
    x = torch.cat(inputs, 1) if len(inputs) > 1 else inputs[0]
    for m in layer.children():
        x = _op(m, x, layer._recomputing)
    return x


def _layer_forward(layer: DenseLayer, features: list[Tensor]) -> Tensor:
    """`DenseLayer.forward` lifted: efficient mode's checkpointed region keeps the conv outputs
    (the policy sees aten.convolution, conv2d's as conv1d's) and recomputes the rest."""
    if layer.memory_efficient and torch.is_grad_enabled() and any(t.requires_grad for t in features):
        return checkpoint(functools.partial(_layer, layer), *features, use_reentrant=False,
                          context_fn=layer._checkpoint_contexts)
    return _layer(layer, *features)


class _LiftedConv:
    """What the shared-storage Function reads of a conv (efficient mode runs the layer's first
    conv inside it): the Conv1d's weight viewed (O, I, 1, k), its window along the second axis."""

    def __init__(self, conv1d: nn.Conv1d) -> None:
        self.weight = conv1d.weight.unsqueeze(2)  # a view: the gradient reaches conv1d.weight
        self.bias = conv1d.bias
        self.stride = (1, *conv1d.stride)
        self.padding = (0, *cast(tuple[int, ...], conv1d.padding))  # `_known`: no string padding here
        self.dilation = (1, *conv1d.dilation)
        self.groups = conv1d.groups


def _lifted_entry(entry: shared.Entry, efficient: bool) -> shared.Entry:
    if not efficient or entry.conv is None:
        return entry
    # the Function reads only weight, bias, stride, padding, dilation and groups of its conv
    return shared.Entry(entry.norm, cast(nn.Module, _LiftedConv(cast(nn.Conv1d, entry.conv))))


def _block(block: DenseBlock, x: Tensor) -> Tensor:
    """`DenseBlock.forward` lifted (the engine's inference aside)."""
    entries = block._shared_entries(x)
    if entries is not None:
        return _shared_forward(block, x, entries)
    layers = [functools.partial(_layer_forward, layer) for layer in block.values()]
    if block.table.dense:
        return run_block(layers, x)
    return run_block(layers, x, block.table.reads, block.table.emits)


def _shared_forward(block: DenseBlock, x: Tensor, entries: list[shared.Entry]) -> Tensor:
    """`DenseBlock._shared_forward` lifted: the buffer is channels_last (`shared.Buffer` takes the
    layout of the block's input) and each layer's rest runs lifted."""
    holder = shared.Buffer(x, block.out_channels)
    buffer, new, offset = holder.tensor, x, 0
    for layer, entry in zip(block.values(), entries):
        efficient = layer.memory_efficient
        buffer, y = shared.write_enter(buffer, new, holder, offset, layer.in_channels,
                                       _lifted_entry(entry, efficient), efficient)
        offset += new.shape[1]
        rest = list(layer.children())[len(lowering.SHARED_ENTRY) - (0 if efficient else 1):]  # as `DenseLayer.rest`
        tail = shared.tail_of(rest) if efficient else None
        if tail is not None:
            y = shared.norm_relu_conv(y, _lifted_entry(tail, True), holder)
        else:
            for m in rest:
                y = _op(m, y)
        new = y
    buffer, _ = shared.write_enter(buffer, new, holder, offset, block.out_channels, None, False)
    holder.version = buffer._version
    return buffer


def features(model: DenseNet, x: Tensor) -> Tensor:
    """`model.features(x)` lifted, in the caller's rank and layout."""
    return unlift(_op(model.features, lift(x)), x)


def features_only(model: DenseNetFeatures, x: Tensor) -> dict[str, Tensor]:
    """`DenseNetFeatures.forward` lifted: each map in the caller's rank and layout."""
    given, x = x, lift(x)
    out: dict[str, Tensor] = {}
    for i, (name, m) in enumerate(model.features.named_children()):
        if i > model.last:
            break
        x = _op(m, x)
        if i == model.stem_tap:
            out["stem"] = unlift(x, given)
        elif isinstance(m, DenseBlock):
            out[name] = unlift(x, given)
    return out


__all__ = ["channels_last", "conv", "features", "features_only", "is_channels_last", "lift", "pool",
           "trains_lifted", "unlift", "unlifted"]
