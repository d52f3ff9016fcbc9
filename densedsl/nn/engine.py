"""The inference engine: an opt-in pass that makes eval-mode forward passes fast.

    model = accelerate(DenseNet(network))   # `compile` (build_model) applies it by default

The modules of `modules.py` compute every op as torchvision does, in one forward path. This
pass attaches an engine that takes over their forward whenever the model is in eval mode and
nothing needs a gradient (and neither torch.jit nor torch.export is recording; under
torch.compile the engine runs eagerly behind one graph break, faster than inductor's code for
the plain path):

- each dense block writes its layers' outputs into one preallocated tensor and every layer
  reads a prefix of it (no concatenation copies);
- each BN that follows a conv is folded into the conv, and a BN-ReLU before a 1x1 conv becomes
  one `maximum` with the BN folded into the conv;
- a transition's average pool runs before its 1x1 conv (both are linear and commute; 4x fewer
  MACs);
- a 1x1 conv over a small map (at most MATMUL_POSITIONS positions, batch included: the last
  blocks, a batch of one) runs as one addmm on the map's (positions, channels) view;
- on CPU the maps are channels_last (oneDNN's native layout: NHWC, NDHWC; a 1-D signal runs as
  an (N, C, 1, L) NHWC image through conv2d's 1 x k kernels, faster than conv1d in either
  layout), given back in the caller's rank and layout (CHANNELS_INNER holds the measurements).

The engine also lets a 1-D network train lifted (`lifts`, `train_features`: `lifted.py`, which
holds the lifted ops and layout helpers both share).

Every rank: Conv1d/2d/3d, BatchNorm1d/2d/3d, the 1-D, 2-D and 3-D average pools. Like torch.ao's
fusion passes, it rewrites modules it knows and runs every other one as it is, so a new kind of
op works (in training and in inference) before anyone teaches the engine about it.
"""

from __future__ import annotations

import functools
from typing import TypeGuard, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import DenseBlock, DenseLayer, DenseNet, DenseNetFeatures, Transition, exporting
from .lifted import channels_last as _channels_last
from .lifted import conv as lifted_conv
from .lifted import empty as _empty
from .lifted import features as lifted_features
from .lifted import features_only as lifted_features_only
from .lifted import is_channels_last as _is_channels_last
from .lifted import pool as lifted_pool
from .lifted import same_layout as _same_layout
from .lifted import trains_lifted, unlift, unlifted

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_Conv = nn.Conv1d | nn.Conv2d | nn.Conv3d
_BatchNorm = nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d
_CONV_FN = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}  # by the weight's (and the map's) dim

# Whether CPU inference lays a map of this dim out channels-innermost (NHWC, NDHWC; a 1-D map
# runs as (N, C, 1, L) NHWC, "lifted": conv1d on N, L, C strides is slower than on NCL, while
# conv2d on NHWC is 1.5-2.4x faster than conv1d for DenseNet's 3-wide and 1x1 convs). Measured
# against contiguous maps, DenseNet-121 inference, MONAI's time over ours, interleaved rounds,
# 2 threads (issue 25): 1-D batch 16 1x1024: lifted NHWC 1.32-1.46x, NCL 1.09-1.11x; 3-D batch
# 2 1x64^3: NDHWC 1.34-1.45x, NCDHW 1.02-1.11x; batch 1 1x96^3: NDHWC 1.72x, NCDHW 1.05x
# (with `_onednn`); 2-D: bench/bench_compiler.py.
CHANNELS_INNER = {3: True, 4: True, 5: True}


def _inference_format(x: Tensor) -> tuple[Tensor, bool]:
    """CPU inference runs channels_last whatever the caller's layout: oneDNN convolves NHWC /
    NDHWC directly, while NCHW costs a reorder around every conv (DenseNet-121, batch 8: about
    1.2x faster, bench/bench_compiler.py; 3-D: see CHANNELS_INNER). A 1-D map (N, C, L) runs as
    (N, C, 1, L) channels_last: (the map, lifted). `_caller_format` gives every result back in
    the caller's rank and layout."""
    if x.device.type != "cpu" or not CHANNELS_INNER.get(x.dim(), False):
        return x, False
    if x.dim() == 3:
        return _channels_last(x.unsqueeze(2)), True
    return _channels_last(x), False


def _caller_format(y: Tensor, x: Tensor, lifted: bool = False) -> Tensor:
    if lifted:
        return unlift(y, x)
    if y.dim() == x.dim() and 3 <= x.dim() <= 5 and x.is_contiguous() and not y.is_contiguous():
        return y.contiguous()
    return y


def _apply(m: nn.Module, x: Tensor, lifted: bool) -> Tensor:
    """A module the engine does not rewrite. On a lifted map the 1-D pools run as their 2-D
    equivalents (1 x k windows) in place of a round trip through (N, C, L)."""
    if not lifted:
        if isinstance(m, nn.AvgPool3d) and _is_channels_last(x) and _window_is_stride(m):
            return _avg_pool_channels_last(x, _triple(m.kernel_size))
        return _same_layout(m(x), x)
    pooled = lifted_pool(m, x)
    return unlifted(m, x) if pooled is None else pooled


def _triple(v) -> tuple[int, int, int]:
    return cast(tuple[int, int, int], tuple(v) if isinstance(v, tuple) else (v, v, v))


def _window_is_stride(pool: nn.AvgPool3d) -> bool:
    """Non-overlapping, unpadded windows in floor mode averaging what they cover (a transition's)."""
    return (_triple(pool.kernel_size) == _triple(pool.stride if pool.stride is not None else pool.kernel_size)
            and _unpadded(pool) and not pool.ceil_mode and pool.divisor_override is None)


def _avg_pool_channels_last(x: Tensor, kernel: tuple[int, int, int]) -> Tensor:
    """A non-overlapping average pool of a channels_last_3d volume as the sum of its kernel's
    strided slices, in the volume's layout. CPU avg_pool3d copies channels_last input to NCDHW
    first and gives NCDHW back (at DenseNet-121's first transition, 1x64^3: 5 ms with the copy
    back against 0.7-1 ms here)."""
    kd, kh, kw = kernel
    n, c, d, h, w = x.shape
    x = x[:, :, :d - d % kd, :h - h % kh, :w - w % kw]  # floor mode: a partial window is dropped
    out: Tensor | None = None
    for a in range(kd):
        for b in range(kh):
            for e in range(kw):
                part = x[:, :, a::kd, b::kh, e::kw]
                out = part.clone(memory_format=torch.channels_last_3d) if out is None else out.add_(part)
    assert out is not None  # every kernel has a window
    return out.mul_(1.0 / (kd * kh * kw))


def _unpadded(pool: nn.Module) -> bool:
    padding = getattr(pool, "padding", None)  # an int, or a tuple (AvgPool1d keeps (p,))
    return padding is not None and all(p == 0 for p in (padding if isinstance(padding, tuple) else (padding,)))


def _inference_weight(weight: Tensor, like: Tensor) -> Tensor:
    """A folded conv weight in the layout its maps have: channels_last on the CPU where the
    rank's inference runs so (CHANNELS_INNER), or where the caller laid the conv out so."""
    if (weight.device.type == "cpu" and CHANNELS_INNER.get(weight.dim(), False)) or _is_channels_last(like):
        return _channels_last(weight)
    return weight


def _onednn(x: Tensor, padding) -> bool:
    """A channels_last_3d float volume on the CPU, which oneDNN convolves in its layout."""
    return (x.dim() == 5 and x.device.type == "cpu" and x.dtype == torch.float32
            and not isinstance(padding, str) and _is_channels_last(x)
            and torch.backends.mkldnn.is_available() and bool(torch.backends.mkldnn.enabled))


# A 1x1 conv over at most this many positions (batch x map) runs as one matrix product: oneDNN's
# per-call cost dominates there (DenseNet-121's last blocks: 2x992x2^3 -> 128 channels 103 us as a
# conv, 38 us as addmm; at 2x128x8^3 both take ~190 us).
MATMUL_POSITIONS = 512


def _matmul_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor | None:
    """A pointwise conv of a small channels-last CPU map as addmm on its (positions, channels)
    view, given back channels-last; None where it does not apply."""
    positions = x.numel() // max(x.shape[1], 1)
    if (x.device.type != "cpu" or positions > MATMUL_POSITIONS or not _is_channels_last(x)
            or weight.dim() < 3 or any(k != 1 for k in weight.shape[2:]) or weight.shape[1] != x.shape[1]):
        return None
    order = (0, *range(2, x.dim()), 1)
    rows = x.permute(order).reshape(positions, x.shape[1])
    w = weight.reshape(weight.shape[0], weight.shape[1]).t()
    y = torch.mm(rows, w) if bias is None else torch.addmm(bias, rows, w)
    return y.view(x.shape[0], *x.shape[2:], weight.shape[0]).permute(0, x.dim() - 1, *range(1, x.dim() - 1))


def _conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride=1, padding=0, dilation=1,
          groups: int = 1) -> Tensor:
    """A conv by the weight's rank; a 1-D conv on a lifted map as a 1 x k conv2d (a 1-D weight
    with channels innermost is, unsqueezed, a channels_last 2-D one: no copy)."""
    if (groups == 1 and _unit(stride) and _unit(dilation) and not isinstance(padding, str)
            and not any(_ints(padding))):
        y = _matmul_conv(x, weight, bias)
        if y is not None:
            return y
    if x.dim() == weight.dim() + 1:
        return lifted_conv(x, weight, bias, stride, padding, dilation, groups)
    if _onednn(x, padding):
        # torch picks its own kernel for a batch of one (or a 1x1x1 conv on one thread) below a
        # size (ConvParams::use_mkldnn): 3-4x slower on DenseNet-121 3-D's later blocks, and NCDHW
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, _triple(padding), _triple(stride),
                                                 _triple(dilation), groups)
    y = _CONV_FN[weight.dim()](x, weight, bias, stride, padding, dilation, groups)
    # On one thread torch runs a 1x1x1 conv of a small batch with its own kernel (oneDNN only
    # from two threads or a batch of 16), which gives NCDHW back: every later block would run so.
    return _same_layout(y, x) if y.dim() == 5 else y


def _ints(v) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _unit(v) -> bool:
    return all(i == 1 for i in _ints(v))


def _channel_shape(x: Tensor | int) -> tuple[int, ...]:
    """(1, -1, 1, ...): a per-channel vector broadcast over a map of dim `x`."""
    dim = x if isinstance(x, int) else x.dim()
    return (1, -1) + (1,) * (dim - 2)


# --- inference helpers: BN folding ------------------------------------------------------------

def _state_key(*tensors: Tensor | None) -> tuple:
    """What identifies the values of `tensors`; None when they cannot be tracked (inference tensors)."""
    key: list[tuple | None] = []
    for t in tensors:
        if t is None:
            key.append(None)
        elif t.is_inference():
            return ()
        else:
            key.append((t.data_ptr(), t._version, t.dtype, t.device))
    return tuple(key)


class _Folded:
    """Eval-mode weights with batch norms folded in, cached until a parameter changes.

    BN(conv(x)) = conv(x)·s + (β − μ·s) with s = γ/√(σ²+ε): scale the output channels of the
    weight by s and fold the rest into a bias. Valid in eval mode only (running statistics).
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], tuple[tuple, object]] = {}

    def clear(self) -> None:
        self._cache.clear()

    def _cached(self, kind: str, name: int, tensors: tuple, compute):
        """compute() once per (kind, module) while none of `tensors` changed (tensor versions)."""
        key = _state_key(*tensors)
        hit = self._cache.get((kind, name))
        if hit is not None and key and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            value = compute()
        if key:
            self._cache[(kind, name)] = (key, value)
        return value

    @staticmethod
    def _scale_shift(norm: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
        # only BNs with running statistics are folded (_foldable_bn, and the conv → BN test)
        assert norm.running_var is not None and norm.running_mean is not None
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias
        return scale, shift

    @staticmethod
    def _norm_tensors(norm: nn.modules.batchnorm._BatchNorm) -> tuple:
        return norm.weight, norm.bias, norm.running_mean, norm.running_var

    def get(self, name: int, conv: _Conv, norm: _BatchNorm) -> tuple[Tensor, Tensor]:
        """Conv → BN as one conv: (weight, bias)."""
        def compute():
            scale, shift = self._scale_shift(norm)
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            weight = conv.weight * scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1))
            return _inference_weight(weight, conv.weight), shift.to(conv.weight.dtype)
        return self._cached("conv_bn", name, (conv.weight, conv.bias, *self._norm_tensors(norm)), compute)

    def relu_conv(self, name: int, norm: _BatchNorm, conv: _Conv,
                  after: _BatchNorm | None = None) -> tuple[Tensor, Tensor, Tensor] | None:
        """BN → ReLU → 1x1 conv (→ BN) as max(x, t) then one conv: (t, weight, bias), or None.

        With s = γ/√(σ²+ε) > 0 and b = β − μ·s, relu(s·x + b) = s·max(x, −b/s) + b, and a 1x1
        conv without padding is linear, so s and b fold into its weight and bias: the O(L²)
        BN-ReLU over each layer's whole input becomes one `maximum` pass. A channel with s = 0
        is the constant relu(b), folded into the bias. Any s < 0 (a trained γ can be negative)
        flips max into min for that channel; then this returns None and the caller runs BN and
        ReLU as they are.
        """
        def compute():
            s, b = self._scale_shift(norm)
            if bool((s < 0).any()):
                return None
            zero = s == 0
            t = torch.where(zero, torch.zeros_like(b), -b / torch.where(zero, torch.ones_like(s), s))
            w = conv.weight.reshape(conv.out_channels, conv.in_channels)
            bias = w @ torch.where(zero, torch.relu(b), b)
            if conv.bias is not None:
                bias = bias + conv.bias
            w = w * torch.where(zero, torch.zeros_like(s), s)
            if after is not None:
                s2, b2 = self._scale_shift(after)
                w, bias = w * s2[:, None], bias * s2 + b2
            weight = _inference_weight(w.reshape_as(conv.weight).to(conv.weight.dtype), conv.weight)
            return t.to(conv.weight.dtype), weight, bias.to(conv.weight.dtype)  # t: (C,)
        tensors = (*self._norm_tensors(norm), conv.weight, conv.bias,
                   *(self._norm_tensors(after) if after is not None else ()))
        return self._cached("relu_conv", name, tensors, compute)

    def channels_last(self, name: int, conv: _Conv) -> Tensor:
        """The conv's weight laid out channels_last, so oneDNN does not re-lay it every call."""
        return self._cached("channels_last", name, (conv.weight,),
                            lambda: _channels_last(conv.weight.detach()))

    def affine(self, name: int, norm: _BatchNorm, dim: int) -> tuple[Tensor, Tensor]:
        """BN in eval mode as x·scale + shift, both shaped (1, C, 1, ...) for maps of `dim`.

        Faster than batch_norm on a channel slice of a preallocated block output, which the
        batch_norm kernel handles through a slow strided path.
        """
        def compute():
            scale, shift = self._scale_shift(norm)
            return scale.reshape(_channel_shape(dim)), shift.reshape(_channel_shape(dim))
        return self._cached("affine", name, self._norm_tensors(norm), compute)


def _empty_like_layout(x: Tensor) -> Tensor:
    """An output for an elementwise op on `x` in `x`'s layout.

    A channel prefix of a channels_last block buffer is not dense, so `torch.maximum(x, t)`
    would allocate NCHW and gather across strides (a third of BC-100's inference time), and
    the next conv would reorder back. Keeping channels innermost keeps every pass contiguous.
    """
    channels_inner = 3 <= x.dim() <= 5 and x.size(1) > 1 and x.stride(1) == 1
    return _empty(tuple(x.shape), x, channels_inner)


def _foldable_bn(m: nn.Module) -> TypeGuard[_BatchNorm]:
    return isinstance(m, _NORMS) and m.track_running_stats and m.running_mean is not None


def _pointwise(m: nn.Module) -> TypeGuard[_Conv]:
    """A 1x1 (1, 1x1x1) conv that mixes channels only: no padding, stride or groups to break
    linearity."""
    return (isinstance(m, _CONVS) and all(k == 1 for k in m.kernel_size) and all(s == 1 for s in m.stride)
            and not isinstance(m.padding, str) and all(p == 0 for p in m.padding)
            and m.groups == 1 and m.padding_mode == "zeros")


def _run_eval(ops: list[nn.Module], x: Tensor, folded: _Folded, lifted: bool = False) -> Tensor:
    """Run a chain of modules in eval mode, folding every BN that directly follows a conv.

    A ReLU runs in place where the lowering allowed it (`lowering.in_place_where_safe`): never
    on the chain's input, a tensor others read, nor through a dropout this loop skips.
    """
    i = 0
    while i < len(ops):
        m = ops[i]
        name = id(m)  # the fold cache's key: one entry per module of the model
        if _foldable_bn(m) and i + 2 < len(ops) and isinstance(ops[i + 1], nn.ReLU) \
                and _pointwise(ops[i + 2]):
            # the casts: mypy narrows no list item with a computed index; the tests above did
            after = (cast(_BatchNorm, ops[i + 3]) if i + 3 < len(ops) and _foldable_bn(ops[i + 3])
                     else None)
            fused = folded.relu_conv(name, m, cast(_Conv, ops[i + 2]), after)
            if fused is not None:
                t, weight, bias = fused
                x = _conv(torch.maximum(x, t.to(x.dtype).reshape(_channel_shape(x)), out=_empty_like_layout(x)),
                          weight, bias)
                i += 4 if after is not None else 3
                continue
        if isinstance(m, _CONVS) and i + 1 < len(ops) and _foldable_bn(ops[i + 1]):
            weight, bias = folded.get(name, m, cast(_BatchNorm, ops[i + 1]))  # tested above
            x = _conv(x, weight, bias, m.stride, m.padding, m.dilation, m.groups)
            i += 2
            continue
        if _foldable_bn(m):
            scale, shift = folded.affine(name, m, x.dim())
            x = torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype), out=_empty_like_layout(x))
        elif isinstance(m, nn.ReLU):
            x = F.relu(x, inplace=m.inplace)
        elif isinstance(m, _CONVS) and m.padding_mode == "zeros" and (
                lifted or (x.device.type == "cpu" and _is_channels_last(x))):
            x = _conv(x, folded.channels_last(name, m), m.bias, m.stride, m.padding, m.dilation,
                      m.groups)
        elif not isinstance(m, nn.Dropout):
            x = _apply(m, x, lifted)
        i += 1
    return x




# --- the engine ---------------------------------------------------------------------------------

def _needs_autograd(module: nn.Module, x: Tensor) -> bool:
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for p in module.parameters())


def _eager(method):
    """An entry point from a module's forward: dynamo does not trace it (the fold cache, `.item()`
    on the fold's sign test and `out=` into buffer slices would break the graph about 150 times on
    BC-100) but calls it as it is, so a compiled eval model runs the eager engine. The disabled
    function is made only while dynamo traces: `torch.compiler.disable` imports torch._dynamo
    (1-2 s), which an eager user never needs."""
    @functools.wraps(method)
    def entry(*args, **kwargs):
        if torch.compiler.is_compiling():
            return torch.compiler.disable(method, recursive=True)(*args, **kwargs)
        return method(*args, **kwargs)
    return entry


class InferenceEngine:
    """The fast eval-mode forward of the modules `accelerate` attached it to; one fold cache."""

    def __init__(self) -> None:
        self.folded = _Folded()

    def clear(self) -> None:
        self.folded.clear()

    @staticmethod
    def applies(module: nn.Module, x: Tensor) -> bool:
        # Under torch.compile too: the entry points below run eagerly behind one graph break each
        # (`torch.compiler.disable`), which measured 1.35x compiled torchvision on BC-100 against
        # 0.98x for the compiled plain path (BENCHMARKS.md, dynamo). torch.jit and torch.export
        # record a graph, so they get the plain path.
        return not module.training and not exporting() and not _needs_autograd(module, x)

    @staticmethod
    def lifts(module: DenseNet | DenseNetFeatures, x: Tensor) -> bool:
        """Whether the model's features train lifted for `x` (a 1-D CPU map; `lifted.py`): called
        where `applies` is False."""
        return trains_lifted(module, x)

    @staticmethod
    def train_features(model: DenseNet, x: Tensor) -> Tensor:
        """`model.features(x)` in training, lifted (`lifts`)."""
        return lifted_features(model, x)

    @staticmethod
    def train_features_only(model: DenseNetFeatures, x: Tensor) -> dict[str, Tensor]:
        """`DenseNetFeatures.forward` in training, lifted (`lifts`)."""
        return lifted_features_only(model, x)

    def layer(self, layer: DenseLayer, x: Tensor, lifted: bool = False) -> Tensor:
        """Eval-mode forward on the already concatenated input, BNs after convs folded."""
        return _run_eval(list(layer.children()), x, self.folded, lifted)

    @_eager
    def block(self, block: DenseBlock, x: Tensor) -> Tensor:
        """A block called on its own: in the caller's layout and rank."""
        return self._block(block, x)

    def _block(self, block: DenseBlock, x: Tensor, lifted: bool = False) -> Tensor:
        """Zero-copy concatenation for DenseNet's table: one output tensor, each layer reads a
        prefix and writes its slice. Any other table gathers each layer's reads (one concat a
        layer) and the block's emits, every layer still run with its norms folded."""
        layers = list(block.values())
        if not layers:
            return x
        table = block.table
        if not table.dense:
            features = [x]
            for j, layer in enumerate(layers, start=1):
                reads = [features[i] for i in table.reads_of(j)]
                features.append(self.layer(layer, reads[0] if len(reads) == 1 else torch.cat(reads, 1), lifted))
            emitted = [features[i] for i in table.emits]
            return emitted[0] if len(emitted) == 1 else torch.cat(emitted, 1)
        first = self.layer(layers[0], x, lifted)
        c = x.shape[1]
        out = _empty((x.shape[0], block.out_channels, *x.shape[2:]), x, _is_channels_last(x),
                     torch.promote_types(x.dtype, first.dtype))
        out[:, :c].copy_(x)
        for j, layer in enumerate(layers):
            width = table.widths[j]
            out[:, c:c + width].copy_(first if j == 0 else self.layer(layer, out[:, :c], lifted))
            c += width
        return out

    def transition(self, t: Transition, x: Tensor, lifted: bool = False) -> Tensor:
        # avg-pool(conv1x1(x)) == conv1x1(avg-pool(x)) when no padding mixes in zeros.
        pool = getattr(t, "pool", None)  # `pool=none` transitions have none
        # (BN-ReLU-Conv only: a post-activation transition, Conv-BN-ReLU, runs as it is built)
        pool_first = (isinstance(pool, _AVG_POOLS) and _unpadded(pool) and _pointwise(t.conv)
                      and next(iter(t.children())) is t.norm and isinstance(getattr(t, "relu", None), nn.ReLU))
        if pool_first and _foldable_bn(t.norm):
            # s·max(x, t) + b pooled is s·pool(max(x, t)) + b: the affine part folds into the conv
            # pool_first holds _pointwise(t.conv)
            fused = self.folded.relu_conv(id(t.conv), t.norm, cast(_Conv, t.conv))
            if fused is not None:
                shift, weight, bias = fused
                shifted = torch.maximum(x, shift.to(x.dtype).reshape(_channel_shape(x)), out=_empty_like_layout(x))
                return _conv(_apply(t.pool, shifted, lifted), weight, bias)
        if lifted:  # the transition's modules one by one: BN, ReLU, conv and pool lifted
            return _run_eval(list(t.children()), x, self.folded, lifted)
        if not pool_first:
            return t(x)
        x = F.relu(t.norm(x))
        return t.conv(t.pool(x))

    def stage(self, m: nn.Module, x: Tensor, lifted: bool = False) -> Tensor:
        if isinstance(m, DenseBlock):
            return self._block(m, x, lifted)
        if isinstance(m, Transition):
            return self.transition(m, x, lifted)
        return _run_eval([m], x, self.folded, lifted) if lifted else m(x)

    def stem(self, stem: list[nn.Module], x: Tensor, lifted: bool = False) -> Tensor:
        if stem and isinstance(stem[0], nn.ReLU):
            x = F.relu(x)  # the chain's first op must not overwrite the caller's tensor
            stem = stem[1:]
        return _run_eval(stem, x, self.folded, lifted)

    @_eager
    def features(self, model: DenseNet, x: Tensor) -> Tensor:
        given = x
        children = list(model.features.children())
        x, lifted = _inference_format(x)
        x = self.stem(children[:model.stem_length], x, lifted)
        for m in children[model.stem_length:]:
            x = self.stage(m, x, lifted)
        return _caller_format(x, given, lifted)

    @_eager
    def features_only(self, model: DenseNetFeatures, x: Tensor) -> dict[str, Tensor]:
        given = x
        x, lifted = _inference_format(x)
        out: dict[str, Tensor] = {}
        children = list(model.features.named_children())[: model.last + 1]
        stem = [m for _, m in children[:model.stem_length]]
        if model.stem_tap is not None:  # the stem in two chains, so that BN folding stops at the tap
            x = self.stem(stem[:model.stem_tap + 1], x, lifted)
            out["stem"] = _caller_format(x, given, lifted)
            stem = stem[model.stem_tap + 1:]
        x = self.stem(stem, x, lifted)
        for name, m in children[model.stem_length:]:
            x = self.stage(m, x, lifted)
            if isinstance(m, DenseBlock):
                out[name] = _caller_format(x, given, lifted)
        return out


def accelerate(model: nn.Module) -> nn.Module:
    """Attach one inference engine to every DenseNet, DenseNetFeatures and DenseBlock in
    `model`; returns `model`. Maps of every rank (Conv1d/2d/3d) are accelerated. A model with a
    transposed conv, or with no conv at all (an MLP on feature vectors: the engine's buffers are
    maps), is returned as it is."""
    targets, convs = [], 0
    for m in model.modules():  # one walk over the modules (a DenseNet-264 has ~950)
        if isinstance(m, nn.modules.conv._ConvNd):
            if not isinstance(m, _CONVS):
                return model
            convs += 1
        elif isinstance(m, (DenseNet, DenseNetFeatures, DenseBlock)):
            targets.append(m)
    if not convs:
        return model
    engine = InferenceEngine()
    for m in targets:
        m.engine = engine
    return model


__all__ = ["InferenceEngine", "accelerate"]
