"""PyTorch modules for a resolved `Network`, laid out like torchvision's DenseNet.

The structure and the names follow torchvision (`pytorch/vision: torchvision/models/densenet.py`,
BSD-3-Clause) for every spec, because module names are the weight format:
`features.{conv0,norm0,relu0,pool0}`, `features.denseblock{i}.denselayer{l}.{norm1,relu1,conv1,
norm2,relu2,conv2}`, `features.transition{j}.{norm,relu,conv,pool}`, `features.norm{B+1}` and
`classifier`. The split entry points (`forward_features`, `forward_head`, `feature_info`,
`set_grad_checkpointing`) follow timm (`huggingface/pytorch-image-models: timm/models/densenet.py`).

Three forward paths compute the same function:
- training / autograd: every layer concatenates its inputs with `torch.cat` (torchvision);
- memory-efficient training: each layer's concatenation, BN, ReLU and dropout are recomputed in
  backward (Pleiss et al. 2017), via non-reentrant checkpointing that keeps the conv outputs;
- inference (eval mode and nothing needs a gradient): each block writes its layers' outputs into
  one preallocated tensor and every layer reads a prefix of it (no concatenation copies), each
  BN that follows a conv is folded into the conv, a BN-ReLU before a 1x1 conv becomes one
  `maximum` with the BN folded into the conv, a transition's average pool runs before its 1x1
  conv (both are linear and commute; 4x fewer MACs), and on CPU the maps are channels_last.
Tracing, scripting, `torch.compile` and export always see the first path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from . import network as n
from .costs import transition_channels, window_out

_CHANNELS_LAST = torch.channels_last
_CONVOLUTION_OPS = (torch.ops.aten.convolution.default,)


def _compiling() -> bool:
    """True while a tracer or compiler records the forward: it must see plain tensor code."""
    return (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting())


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


def _needs_autograd(module: nn.Module, x: Tensor) -> bool:
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for p in module.parameters())


def _pool(pool: n.Pool) -> nn.Module:
    cls = nn.AvgPool2d if pool.mode == "avg" else nn.MaxPool2d
    return cls(pool.kernel, stride=pool.stride, padding=pool.padding)


# --- inference helpers: BN folding ------------------------------------------------------------

def _state_key(*tensors: Tensor | None) -> tuple:
    """What identifies the values of `tensors`; None when they cannot be tracked (inference tensors)."""
    key = []
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
        self._cache: dict[tuple[str, str], tuple[tuple, object]] = {}

    def clear(self) -> None:
        self._cache.clear()

    def _cached(self, kind: str, name: str, tensors: tuple, compute):
        """compute() once per (kind, name) while none of `tensors` changed (tensor versions)."""
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

    def get(self, name: str, conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
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

    def relu_conv(self, name: str, norm: nn.BatchNorm2d, conv: nn.Conv2d,
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

    def channels_last(self, name: str, conv: nn.Conv2d) -> Tensor:
        """The conv's weight laid out channels_last, so oneDNN does not re-lay it every call."""
        return self._cached("channels_last", name, (conv.weight,),
                            lambda: conv.weight.detach().contiguous(memory_format=_CHANNELS_LAST))

    def affine(self, name: str, norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
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


def _foldable_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None


def _pointwise(m: nn.Module) -> bool:
    """A 1x1 conv that mixes channels only: no padding, stride or groups to break linearity."""
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1)
            and m.padding == (0, 0) and m.groups == 1 and m.padding_mode == "zeros")


def _run_eval(ops: list[tuple[str, nn.Module]], x: Tensor, folded: _Folded) -> Tensor:
    """Run a chain of modules in eval mode, folding every BN that directly follows a conv.

    ReLU runs in place: every tensor it sees here was made by an earlier op of the chain (a chain
    never starts with a ReLU on borrowed storage: callers check).
    """
    i = 0
    while i < len(ops):
        name, m = ops[i]
        if _foldable_bn(m) and i + 2 < len(ops) and isinstance(ops[i + 1][1], nn.ReLU) \
                and _pointwise(ops[i + 2][1]):
            after = ops[i + 3][1] if i + 3 < len(ops) and _foldable_bn(ops[i + 3][1]) else None
            fused = folded.relu_conv(name, m, ops[i + 2][1], after)
            if fused is not None:
                t, weight, bias = fused
                x = F.conv2d(torch.maximum(x, t.to(x.dtype), out=_empty_like_layout(x)), weight, bias)
                i += 4 if after is not None else 3
                continue
        if isinstance(m, nn.Conv2d) and i + 1 < len(ops) and isinstance(ops[i + 1][1], nn.BatchNorm2d) \
                and ops[i + 1][1].track_running_stats and ops[i + 1][1].running_mean is not None:
            weight, bias = folded.get(name, m, ops[i + 1][1])
            x = F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation, m.groups)
            i += 2
            continue
        if isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None:
            scale, shift = folded.affine(name, m)
            x = torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype), out=_empty_like_layout(x))
        elif isinstance(m, nn.ReLU):
            x = F.relu(x, inplace=i > 0)
        elif isinstance(m, nn.Conv2d) and x.device.type == "cpu" and _is_channels_last(x) \
                and m.padding_mode == "zeros":
            x = F.conv2d(x, folded.channels_last(name, m), m.bias, m.stride, m.padding, m.dilation,
                         m.groups)
        elif not isinstance(m, nn.Dropout):
            x = m(x)
        i += 1
    return x


# --- dense layers and blocks --------------------------------------------------------------------

class DenseLayer(nn.Module):
    """One H_ℓ: (BN-ReLU-Conv1x1 to bottleneck·k, drop) then BN-ReLU-Conv3x3 to k (drop).

    Children are registered in execution order, so `print(model)` reads like the data flow: pre-
    activation `norm1 relu1 conv1 [drop1] norm2 relu2 conv2 [drop2]`, post-activation `conv1 norm1
    relu1 [drop1] conv2 norm2 relu2 [drop2]`; without a bottleneck only the `…1` unit exists (a
    3x3 conv straight to k). Dropout ends its unit: after the conv in pre-activation order, after
    the ReLU in post-activation order.
    """

    def __init__(self, in_channels: int, growth: int, *, bottleneck: int | None = None,
                 dropout: float = 0.0, bias: bool = False, order: n.Order = "pre",
                 memory_efficient: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.order = order
        self.memory_efficient = memory_efficient
        self.in_channels = in_channels
        self.growth = growth
        widths = [(in_channels, bottleneck * growth, 1, 0), (bottleneck * growth, growth, 3, 1)] \
            if bottleneck is not None else [(in_channels, growth, 3, 1)]
        self._units: list[list[str]] = []
        for u, (cin, cout, kernel, padding) in enumerate(widths, start=1):
            conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=bias, **dd)
            relu = nn.ReLU(inplace=True)
            if order == "pre":
                unit = [(f"norm{u}", nn.BatchNorm2d(cin, **dd)), (f"relu{u}", relu), (f"conv{u}", conv)]
            else:
                unit = [(f"conv{u}", conv), (f"norm{u}", nn.BatchNorm2d(cout, **dd)), (f"relu{u}", relu)]
            if dropout > 0:
                unit.append((f"drop{u}", nn.Dropout(dropout)))
            for name, module in unit:
                self.add_module(name, module)
            self._units.append([name for name, _ in unit])
        self._recomputing = False
        self._folded = _Folded()

    def _ops(self, unit: int) -> list[tuple[str, nn.Module]]:
        return [(name, getattr(self, name)) for name in self._units[unit]]

    def _run(self, unit: int, x: Tensor) -> Tensor:
        for name in self._units[unit]:
            m = getattr(self, name)
            if self._recomputing and isinstance(m, nn.BatchNorm2d) and m.training:
                # Recomputation in backward: same batch statistics, but the running statistics
                # were already updated by the forward pass and must not move twice (momentum 0
                # leaves them as they are and keeps the op, hence the saved tensors, the same).
                x = F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, True, 0.0, m.eps)
            else:
                x = m(x)
        return x

    def _first(self, *inputs: Tensor) -> Tensor:
        """Concat + the first unit (BN-ReLU-Conv, or Conv-BN-ReLU post-activation)."""
        x = torch.cat(inputs, 1) if len(inputs) > 1 else inputs[0]
        return self._run(0, x)

    def _checkpoint_contexts(self):
        # Keep the conv outputs (they are needed anyway as the next op's input), recompute the
        # concatenation and the BN-ReLU around them: Pleiss et al.'s shared-storage scheme.
        forward_ctx, recompute_ctx = create_selective_checkpoint_contexts(
            lambda ctx, op, *args, **kwargs: CheckpointPolicy.MUST_SAVE if op in _CONVOLUTION_OPS
            else CheckpointPolicy.PREFER_RECOMPUTE)
        return forward_ctx, _Recomputing(self, recompute_ctx)

    def _layer(self, *inputs: Tensor) -> Tensor:
        x = self._first(*inputs)
        for unit in range(1, len(self._units)):
            x = self._run(unit, x)
        return x

    def forward(self, features: list[Tensor]) -> Tensor:
        if (self.memory_efficient and torch.is_grad_enabled() and not _compiling()
                and any(t.requires_grad for t in features)):
            # The whole layer is one checkpointed region that keeps only its conv outputs: the
            # bottleneck's 4k channels and the k new ones. The concatenation, every BN and ReLU
            # output and the dropout masks (same RNG state) are recomputed in backward.
            return checkpoint(self._layer, *features, use_reentrant=False,
                              context_fn=self._checkpoint_contexts)
        return self._layer(*features)

    def forward_inference(self, x: Tensor) -> Tensor:
        """Eval-mode forward on the already concatenated input, BNs after convs folded."""
        ops = [op for unit in range(len(self._units)) for op in self._ops(unit)]
        return _run_eval(ops, x, self._folded)

    def train(self, mode: bool = True) -> "DenseLayer":
        self._folded.clear()
        return super().train(mode)


class _Recomputing:
    """The recompute-side checkpoint context: marks the layer, then enters torch's SAC context."""

    def __init__(self, layer: DenseLayer, inner) -> None:
        self.layer, self.inner = layer, inner

    def __enter__(self):
        self.layer._recomputing = True
        return self.inner.__enter__()

    def __exit__(self, *exc):
        self.layer._recomputing = False
        return self.inner.__exit__(*exc)


class DenseBlock(nn.ModuleDict):
    """`denselayer1 … denselayerL`; outputs the concatenation x0 … xL (in + L·growth channels)."""

    _version = 2  # torchvision's: keys without the legacy 'norm.1' dots

    def __init__(self, in_channels: int, layers: int, growth: int, **layer_options) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.growth = growth
        self.out_channels = in_channels + layers * growth
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}",
                            DenseLayer(in_channels + i * growth, growth, **layer_options))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training and not _compiling() and not _needs_autograd(self, x):
            return self.forward_inference(x)
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)

    def forward_inference(self, x: Tensor) -> Tensor:
        """Zero-copy concatenation: one output tensor, each layer reads a prefix, writes its slice."""
        layers = list(self.values())
        if not layers:
            return x
        first = layers[0].forward_inference(x)
        fmt = _CHANNELS_LAST if _is_channels_last(x) else torch.contiguous_format
        n_, c, h, w = x.shape
        out = torch.empty((n_, self.out_channels, h, w), dtype=torch.promote_types(x.dtype, first.dtype),
                          device=x.device, memory_format=fmt)
        out[:, :c].copy_(x)
        out[:, c:c + self.growth].copy_(first)
        c += self.growth
        for layer in layers[1:]:
            out[:, c:c + self.growth].copy_(layer.forward_inference(out[:, :c]))
            c += self.growth
        return out


class Transition(nn.Sequential):
    """BN-ReLU-Conv1x1-(Dropout)-Pool between two dense blocks."""

    def __init__(self, in_channels: int, out_channels: int, *, bias: bool = False, dropout: float = 0.0,
                 pool: n.Pool = n.Pool(), device=None, dtype=None) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(in_channels, device=device, dtype=dtype))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, 1, bias=bias, device=device, dtype=dtype))
        if dropout > 0:
            self.add_module("drop", nn.Dropout(dropout))
        self.add_module("pool", _pool(pool))
        # avg-pool(conv1x1(x)) == conv1x1(avg-pool(x)) when no padding mixes in zeros.
        self._pool_first = pool.mode == "avg" and pool.padding == 0
        self._folded = _Folded()

    def train(self, mode: bool = True) -> "Transition":
        self._folded.clear()
        return super().train(mode)

    def forward_inference(self, x: Tensor) -> Tensor:
        if self._pool_first and _foldable_bn(self.norm):
            # s·max(x, t) + b pooled is s·pool(max(x, t)) + b: the affine part folds into the conv
            fused = self._folded.relu_conv("conv", self.norm, self.conv)
            if fused is not None:
                t, weight, bias = fused
                return F.conv2d(self.pool(torch.maximum(x, t.to(x.dtype), out=_empty_like_layout(x))),
                                weight, bias)
        x = F.relu(self.norm(x))
        if self._pool_first:
            return self.conv(self.pool(x))
        return self.pool(self.conv(x))


# --- the network --------------------------------------------------------------------------------

def init_weights(model: nn.Module) -> None:
    """torchvision's "Official init from torch repo", plus a zero conv bias.

    Self-contained on purpose: `densedsl compile -o model.py` embeds this function's source.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, 0)


class DenseNet(nn.Module):
    """A compiled `Network`: `features` (nn.Sequential) then, with a head, `classifier` (Linear).

    `forward_features(x)` returns the final feature map after the head's norm and ReLU (timm's
    `forward_features`, whose `norm5` is a fused BN-ReLU); `forward_head(x, pre_logits)` pools,
    flattens, drops and classifies; `forward(x)` is both. Without a head, `forward` returns the
    last feature map.
    """

    def __init__(self, network: n.Network, *, memory: str = "standard", device=None, dtype=None) -> None:
        super().__init__()
        if memory not in ("standard", "efficient"):
            raise ValueError(f"memory must be 'standard' or 'efficient', not {memory!r}")
        dd = {"device": device, "dtype": dtype}
        self.network_name = network.name
        self.input_shape = network.input
        self.features = nn.Sequential()
        self.feature_info: list[dict] = []
        c, h, w = network.input
        reduction = 1
        counts: dict[str, int] = {}

        def stem_name(kind: str) -> str:
            counts[kind] = counts.get(kind, 0) + 1
            return f"{kind}{counts[kind] - 1}"

        for op in network.stem.ops:
            if isinstance(op, n.Conv):
                module = nn.Conv2d(c, op.out_channels, op.kernel, stride=op.stride, padding=op.padding,
                                   bias=op.bias, **dd)
                c = op.out_channels
                h, w = (window_out(s, op.kernel, op.stride, op.padding) for s in (h, w))
                reduction *= op.stride
                self.features.add_module(stem_name("conv"), module)
            elif isinstance(op, n.Norm):
                self.features.add_module(stem_name("norm"), nn.BatchNorm2d(c, **dd))
            elif isinstance(op, n.ReLU):
                self.features.add_module(stem_name("relu"), nn.ReLU(inplace=True))
            elif isinstance(op, n.Pool):
                h, w = (window_out(s, op.kernel, op.stride, op.padding) for s in (h, w))
                reduction *= op.stride
                self.features.add_module(stem_name("pool"), _pool(op))
            else:
                self.features.add_module(stem_name("drop"), nn.Dropout(op.rate))
        self._stem_length = len(self.features)

        for stage in network.stages:
            if isinstance(stage, n.DenseBlock):
                block = DenseBlock(c, stage.layers, stage.growth, bottleneck=stage.bottleneck,
                                   dropout=stage.dropout, bias=stage.bias, order=stage.order,
                                   memory_efficient=memory == "efficient", **dd)
                c = block.out_channels
                self.features.add_module(f"denseblock{stage.index}", block)
                self.feature_info.append({"num_chs": c, "reduction": reduction,
                                          "module": f"features.denseblock{stage.index}"})
            else:
                out = transition_channels(c, stage)
                self.features.add_module(f"transition{stage.index}", Transition(
                    c, out, bias=stage.bias, dropout=stage.dropout, pool=stage.pool, **dd))
                c = out
                h, w = (window_out(s, stage.pool.kernel, stage.pool.stride, stage.pool.padding) for s in (h, w))
                reduction *= stage.pool.stride

        head = network.head
        self.head_norm = head is not None and head.norm
        if self.head_norm:
            self.features.add_module(f"norm{len(network.blocks) + 1}", nn.BatchNorm2d(c, **dd))
        self.num_features = c
        self.head_pool = head.pool if head is not None else None
        self.head_window = head.window if head is not None else None
        self.head_drop = head.dropout if head is not None else 0.0
        if head is not None:
            if head.window is not None:
                kernel, stride = head.window
                h, w = (window_out(s, kernel, stride, 0) for s in (h, w))
                self.head_hidden_size = c * h * w
            else:
                self.head_hidden_size = c
            self.num_classes = head.classes
            self.classifier: nn.Module = nn.Linear(self.head_hidden_size, head.classes, **dd)
        else:
            self.num_classes = 0
            self.head_hidden_size = c
        self._folded = _Folded()
        self._init_weights()

    def _init_weights(self) -> None:
        init_weights(self)

    # timm's interface ---------------------------------------------------------------------------

    @property
    def has_head(self) -> bool:
        return hasattr(self, "classifier")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Switch memory-efficient recomputation on or off for every dense layer."""
        for m in self.modules():
            if isinstance(m, DenseLayer):
                m.memory_efficient = enable

    def get_classifier(self) -> nn.Module:
        if not self.has_head:
            raise AttributeError(f"network {self.network_name!r} has no head, hence no classifier")
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier for `num_classes` (0: none, `forward` returns pre-logits)."""
        if not self.has_head:
            raise AttributeError(f"network {self.network_name!r} has no head, hence no classifier")
        self.num_classes = num_classes
        ref = self.classifier.weight if isinstance(self.classifier, nn.Linear) else None
        dd = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        self.classifier = nn.Linear(self.head_hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()
        if isinstance(self.classifier, nn.Linear):
            nn.init.constant_(self.classifier.bias, 0)

    def train(self, mode: bool = True) -> "DenseNet":
        self._folded.clear()
        return super().train(mode)

    # forward ------------------------------------------------------------------------------------

    def _stem_inference(self, x: Tensor) -> Tensor:
        ops = list(self.features.named_children())[: self._stem_length]
        if ops and isinstance(ops[0][1], nn.ReLU):
            x = F.relu(x)  # the chain's first op must not overwrite the caller's tensor
            ops = ops[1:]
        return _run_eval(ops, x, self._folded)

    def forward_features(self, x: Tensor) -> Tensor:
        if self.training or _compiling() or _needs_autograd(self, x):
            x = self.features(x)
        else:
            given = x
            x = self._stem_inference(_inference_format(x))
            for m in list(self.features.children())[self._stem_length:]:
                x = m.forward_inference(x) if isinstance(m, (DenseBlock, Transition)) else m(x)
            x = _caller_format(x, given)
        if self.head_norm:
            x = F.relu(x, inplace=True)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.head_window is not None:
            kernel, stride = self.head_window
            pool = F.avg_pool2d if self.head_pool == "avg" else F.max_pool2d
            x = pool(x, kernel, stride)
        elif self.head_pool == "avg":
            x = F.adaptive_avg_pool2d(x, 1)
        else:
            x = F.adaptive_max_pool2d(x, 1)
        # NCHW order for the flatten whatever the memory format, so weights do not depend on it.
        x = torch.flatten(x.contiguous(), 1)
        if self.head_drop > 0:
            x = F.dropout(x, self.head_drop, self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        return self.forward_head(x) if self.has_head else x


class DenseNetFeatures(nn.Module):
    """timm's `features_only`: `forward` returns {'denseblock{i}': output of dense block i}."""

    def __init__(self, model: DenseNet) -> None:
        super().__init__()
        self.features = model.features
        self.feature_info = model.feature_info
        self._stem_length = model._stem_length
        self._folded = _Folded()
        last = max((i for i, m in enumerate(self.features) if isinstance(m, DenseBlock)), default=-1)
        self._last = last

    def train(self, mode: bool = True) -> "DenseNetFeatures":
        self._folded.clear()
        return super().train(mode)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        fast = not self.training and not _compiling() and not _needs_autograd(self, x)
        given = x
        if fast:
            x = _inference_format(x)
        out: dict[str, Tensor] = {}
        for i, (name, m) in enumerate(self.features.named_children()):
            if i > self._last:
                break
            if i < self._stem_length:
                if fast and isinstance(m, nn.ReLU):
                    x = F.relu(x)
                elif not (fast and isinstance(m, nn.Dropout)):
                    x = m(x)
            elif fast:
                x = m.forward_inference(x)
            else:
                x = m(x)
            if isinstance(m, DenseBlock):
                out[name] = _caller_format(x, given) if fast else x
        return out


__all__ = ["DenseBlock", "DenseLayer", "DenseNet", "DenseNetFeatures", "Transition"]
