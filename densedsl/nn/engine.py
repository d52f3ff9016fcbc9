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
- on CPU the maps are channels_last (oneDNN's native layout), given back in the caller's.

Like torch.ao's fusion passes, it rewrites modules it knows and runs every other one as it is,
so a new kind of op works (in training and in inference) before anyone teaches the engine about
it. It knows 2-D networks: `accelerate` leaves 1-D and 3-D models on the plain path.
"""

from __future__ import annotations

import functools
from typing import TypeGuard, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import DenseBlock, DenseLayer, DenseNet, DenseNetFeatures, Transition, exporting

_CHANNELS_LAST = torch.channels_last


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=_CHANNELS_LAST)


def _inference_format(x: Tensor) -> Tensor:
    """CPU inference runs channels_last whatever the caller's layout: oneDNN convolves NHWC
    directly, while NCHW costs a reorder around every conv (DenseNet-121, batch 8: about 1.2x
    faster, bench/bench_compiler.py). `_caller_format` gives 4-D results back in the caller's."""
    if x.device.type == "cpu" and x.dim() == 4:
        return x.contiguous(memory_format=_CHANNELS_LAST)
    return x


def _caller_format(y: Tensor, x: Tensor) -> Tensor:
    if y.dim() == 4 and x.dim() == 4 and x.is_contiguous() and not y.is_contiguous():
        return y.contiguous()
    return y


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
    def _scale_shift(norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
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
    def _norm_tensors(norm: nn.BatchNorm2d) -> tuple:
        return norm.weight, norm.bias, norm.running_mean, norm.running_var

    def get(self, name: int, conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
        """Conv → BN as one conv: (weight, bias)."""
        def compute():
            scale, shift = self._scale_shift(norm)
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            weight = conv.weight * scale.reshape(-1, 1, 1, 1)
            if weight.device.type == "cpu" or conv.weight.is_contiguous(memory_format=_CHANNELS_LAST):
                weight = weight.contiguous(memory_format=_CHANNELS_LAST)  # CPU inference is NHWC
            return weight, shift.to(conv.weight.dtype)
        return self._cached("conv_bn", name, (conv.weight, conv.bias, *self._norm_tensors(norm)), compute)

    def relu_conv(self, name: int, norm: nn.BatchNorm2d, conv: nn.Conv2d,
                  after: nn.BatchNorm2d | None = None) -> tuple[Tensor, Tensor, Tensor] | None:
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
            weight = w.reshape_as(conv.weight).to(conv.weight.dtype)
            if weight.device.type == "cpu":
                weight = weight.contiguous(memory_format=_CHANNELS_LAST)
            return t.reshape(1, -1, 1, 1).to(conv.weight.dtype), weight, bias.to(conv.weight.dtype)
        tensors = (*self._norm_tensors(norm), conv.weight, conv.bias,
                   *(self._norm_tensors(after) if after is not None else ()))
        return self._cached("relu_conv", name, tensors, compute)

    def channels_last(self, name: int, conv: nn.Conv2d) -> Tensor:
        """The conv's weight laid out channels_last, so oneDNN does not re-lay it every call."""
        return self._cached("channels_last", name, (conv.weight,),
                            lambda: conv.weight.detach().contiguous(memory_format=_CHANNELS_LAST))

    def affine(self, name: int, norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
        """BN in eval mode as x·scale + shift, both shaped (1, C, 1, 1).

        Faster than batch_norm on a channel slice of a preallocated block output, which the
        batch_norm kernel handles through a slow strided path.
        """
        def compute():
            scale, shift = self._scale_shift(norm)
            return scale.reshape(1, -1, 1, 1), shift.reshape(1, -1, 1, 1)
        return self._cached("affine", name, self._norm_tensors(norm), compute)


def _empty_like_layout(x: Tensor) -> Tensor:
    """An output for an elementwise op on `x` in `x`'s layout.

    A channel prefix of a channels_last block buffer is not dense, so `torch.maximum(x, t)`
    would allocate NCHW and gather across strides (a third of BC-100's inference time), and
    the next conv would reorder back. Keeping channels innermost keeps every pass contiguous.
    """
    channels_inner = x.dim() == 4 and x.size(1) > 1 and x.stride(1) == 1
    return torch.empty(x.shape, dtype=x.dtype, device=x.device,
                       memory_format=_CHANNELS_LAST if channels_inner else torch.contiguous_format)


def _foldable_bn(m: nn.Module) -> TypeGuard[nn.BatchNorm2d]:
    return isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None


def _pointwise(m: nn.Module) -> TypeGuard[nn.Conv2d]:
    """A 1x1 conv that mixes channels only: no padding, stride or groups to break linearity."""
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1)
            and m.padding == (0, 0) and m.groups == 1 and m.padding_mode == "zeros")


def _run_eval(ops: list[nn.Module], x: Tensor, folded: _Folded) -> Tensor:
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
            after = (cast(nn.BatchNorm2d, ops[i + 3]) if i + 3 < len(ops) and _foldable_bn(ops[i + 3])
                     else None)
            fused = folded.relu_conv(name, m, cast(nn.Conv2d, ops[i + 2]), after)
            if fused is not None:
                t, weight, bias = fused
                x = F.conv2d(torch.maximum(x, t.to(x.dtype), out=_empty_like_layout(x)), weight, bias)
                i += 4 if after is not None else 3
                continue
        if isinstance(m, nn.Conv2d) and i + 1 < len(ops) and isinstance(ops[i + 1], nn.BatchNorm2d) \
                and ops[i + 1].track_running_stats and ops[i + 1].running_mean is not None:
            weight, bias = folded.get(name, m, cast(nn.BatchNorm2d, ops[i + 1]))  # tested above
            x = F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation, m.groups)
            i += 2
            continue
        if isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None:
            scale, shift = folded.affine(name, m)
            x = torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype), out=_empty_like_layout(x))
        elif isinstance(m, nn.ReLU):
            x = F.relu(x, inplace=m.inplace)
        elif isinstance(m, nn.Conv2d) and x.device.type == "cpu" and _is_channels_last(x) \
                and m.padding_mode == "zeros":
            x = F.conv2d(x, folded.channels_last(name, m), m.bias, m.stride, m.padding, m.dilation,
                         m.groups)
        elif not isinstance(m, nn.Dropout):
            x = m(x)
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

    def layer(self, layer: DenseLayer, x: Tensor) -> Tensor:
        """Eval-mode forward on the already concatenated input, BNs after convs folded."""
        return _run_eval(list(layer.children()), x, self.folded)

    @_eager
    def block(self, block: DenseBlock, x: Tensor) -> Tensor:
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
                features.append(self.layer(layer, reads[0] if len(reads) == 1 else torch.cat(reads, 1)))
            emitted = [features[i] for i in table.emits]
            return emitted[0] if len(emitted) == 1 else torch.cat(emitted, 1)
        first = self.layer(layers[0], x)
        fmt = _CHANNELS_LAST if _is_channels_last(x) else torch.contiguous_format
        n_, c, h, w = x.shape
        out = torch.empty((n_, block.out_channels, h, w), dtype=torch.promote_types(x.dtype, first.dtype),
                          device=x.device, memory_format=fmt)
        out[:, :c].copy_(x)
        for j, layer in enumerate(layers):
            width = table.widths[j]
            out[:, c:c + width].copy_(first if j == 0 else self.layer(layer, out[:, :c]))
            c += width
        return out

    def transition(self, t: Transition, x: Tensor) -> Tensor:
        # avg-pool(conv1x1(x)) == conv1x1(avg-pool(x)) when no padding mixes in zeros.
        pool = getattr(t, "pool", None)  # `pool=none` transitions have none
        # (BN-ReLU-Conv only: a post-activation transition, Conv-BN-ReLU, runs as it is built)
        pool_first = (isinstance(pool, nn.AvgPool2d) and pool.padding == 0 and _pointwise(t.conv)
                      and next(iter(t.children())) is t.norm and isinstance(getattr(t, "relu", None), nn.ReLU))
        if pool_first and _foldable_bn(t.norm):
            # s·max(x, t) + b pooled is s·pool(max(x, t)) + b: the affine part folds into the conv
            # pool_first holds _pointwise(t.conv)
            fused = self.folded.relu_conv(id(t.conv), t.norm, cast(nn.Conv2d, t.conv))
            if fused is not None:
                shift, weight, bias = fused
                return F.conv2d(t.pool(torch.maximum(x, shift.to(x.dtype), out=_empty_like_layout(x))),
                                weight, bias)
        if not pool_first:
            return t(x)
        x = F.relu(t.norm(x))
        return t.conv(t.pool(x))

    def stage(self, m: nn.Module, x: Tensor) -> Tensor:
        if isinstance(m, DenseBlock):
            return self.block(m, x)
        if isinstance(m, Transition):
            return self.transition(m, x)
        return m(x)

    def stem(self, stem: list[nn.Module], x: Tensor) -> Tensor:
        if stem and isinstance(stem[0], nn.ReLU):
            x = F.relu(x)  # the chain's first op must not overwrite the caller's tensor
            stem = stem[1:]
        return _run_eval(stem, x, self.folded)

    @_eager
    def features(self, model: DenseNet, x: Tensor) -> Tensor:
        given = x
        children = list(model.features.children())
        x = self.stem(children[:model.stem_length], _inference_format(x))
        for m in children[model.stem_length:]:
            x = self.stage(m, x)
        return _caller_format(x, given)

    @_eager
    def features_only(self, model: DenseNetFeatures, x: Tensor) -> dict[str, Tensor]:
        given = x
        x = _inference_format(x)
        out: dict[str, Tensor] = {}
        children = list(model.features.named_children())[: model.last + 1]
        stem = [m for _, m in children[:model.stem_length]]
        if model.stem_tap is not None:  # the stem in two chains, so that BN folding stops at the tap
            x = self.stem(stem[:model.stem_tap + 1], x)
            out["stem"] = _caller_format(x, given)
            stem = stem[model.stem_tap + 1:]
        x = self.stem(stem, x)
        for name, m in children[model.stem_length:]:
            x = self.stage(m, x)
            if isinstance(m, DenseBlock):
                out[name] = _caller_format(x, given)
        return out


def accelerate(model: nn.Module) -> nn.Module:
    """Attach one inference engine to every DenseNet, DenseNetFeatures and DenseBlock in
    `model`; returns `model`. A model with any conv that is not 2-D, or with no conv at all (an
    MLP on feature vectors: the engine's buffers are 2-D maps), is returned as it is."""
    targets, convs = [], 0
    for m in model.modules():  # one walk over the modules (a DenseNet-264 has ~950)
        if isinstance(m, nn.modules.conv._ConvNd):
            if not isinstance(m, nn.Conv2d):
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
