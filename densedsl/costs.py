"""Per-op sizes and costs as pure functions, and the op lists every stage lowers to.

Everything here is integer arithmetic on plain values (no graph, no torch), so the same
functions serve three callers: `graph.lower` turns the op lists into nodes, `analysis` predicts
totals from a `Network` before building any graph (to refuse absurd specs in microseconds), and
the minimum-input-size search evaluates the size chain thousands of times.

Conventions (docs/graph.md, docs/analysis.md):
- params count BN's affine weight and bias; buffers count BN's running mean and var;
- MACs: conv `Cout·(Cin/groups)·kh·kw·Hout·Wout`, linear `in·out`; BN, ReLU, pooling, concat
  and dropout cost 0, as in torch.utils.flop_counter (which counts FLOPs = 2·MACs).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator

from .network import Conv, DenseBlock, Dropout, Head, Network, Norm, Pool, ReLU, Stem, Transition

Shape = tuple[int, ...]  # (C, H, W) for maps, (N,) after flatten

DTYPE_BYTES: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "double": 8, "float": 4, "half": 2,
}
MASK_BYTES = 1      # dropout masks are torch.bool
INDEX_BYTES = 8     # max-pool indices are int64
STAT_BYTES = 4      # BN saves per-channel mean and inverse std in float32, even under autocast


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(sorted(DTYPE_BYTES))}") from None


# --- sizes -------------------------------------------------------------------------------------

def window_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a conv or pool along one axis (floor mode, as PyTorch's default).

    Can be 0 or negative: callers check `size + 2·padding >= kernel` first.
    """
    return (size + 2 * padding - kernel) // stride + 1


def drops_input(size: int, kernel: int, stride: int, padding: int) -> bool:
    """True when the last real row (not padding) is covered by no window.

    Windows cover padded positions [i·s, i·s + k) for i < out; the data sits at [p, p + size).
    A stride-2 conv that skips only a padding row (DenseNet's 7x7 stem at 224) drops nothing.
    """
    out = window_out(size, kernel, stride, padding)
    return out >= 1 and (out - 1) * stride + kernel < padding + size


def numel(shape: Shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def transition_channels(m: int, t: Transition) -> int:
    """Channels a transition emits from m: its explicit count, or ⌊θ·m⌋ in exact arithmetic."""
    if t.channels is not None:
        return t.channels
    assert t.compression is not None
    return int(Fraction(t.compression) * m // 1)


def block_out_channels(k0: int, block: DenseBlock) -> int:
    return k0 + block.growth * block.layers


def layer_in_channels(k0: int, block: DenseBlock, layer: int) -> int:
    """Channels entering layer ℓ (1-based): k0 + k·(ℓ−1)."""
    return k0 + block.growth * (layer - 1)


# --- per-op figures ----------------------------------------------------------------------------

def conv_params(cin: int, cout: int, kernel: int, bias: bool) -> int:
    return cout * cin * kernel * kernel + (cout if bias else 0)


def conv_macs(cin: int, cout: int, kernel: int, hout: int, wout: int) -> int:
    return cout * cin * kernel * kernel * hout * wout


def norm_params(channels: int) -> int:
    return 2 * channels  # affine weight and bias


def norm_buffers(channels: int) -> int:
    return 2 * channels  # running mean and var; num_batches_tracked is a counter, not counted


def linear_params(inf: int, outf: int) -> int:
    return inf * outf + outf


def linear_macs(inf: int, outf: int) -> int:
    return inf * outf


# --- op lists ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Op:
    """One operation of the compiled model: what `graph.lower` turns into a node.

    `name` is the node id inside its stage (`norm1`, `conv0`, `pool`); `module` the state_dict
    prefix inside `features` for ops with weights, or None. `attrs` holds the op-specific
    attributes of docs/graph.md.
    """

    name: str
    kind: str
    in_shape: Shape
    out_shape: Shape
    params: int = 0
    buffers: int = 0
    macs: int = 0
    module: str | None = None
    attrs: tuple[tuple[str, Any], ...] = ()


def _conv(name: str, shape: Shape, cout: int, kernel: int, stride: int, padding: int, bias: bool,
          module: str | None) -> Op:
    c, h, w = shape
    ho, wo = window_out(h, kernel, stride, padding), window_out(w, kernel, stride, padding)
    return Op(name, "conv", shape, (cout, ho, wo), conv_params(c, cout, kernel, bias), 0,
              conv_macs(c, cout, kernel, ho, wo), module,
              (("in_channels", c), ("out_channels", cout), ("kernel", kernel), ("stride", stride),
               ("padding", padding), ("bias", bias)))


def _norm(name: str, shape: Shape, module: str | None) -> Op:
    return Op(name, "norm", shape, shape, norm_params(shape[0]), norm_buffers(shape[0]), 0, module,
              (("channels", shape[0]),))


def _relu(name: str, shape: Shape) -> Op:
    return Op(name, "relu", shape, shape)


def _drop(name: str, shape: Shape, rate: float) -> Op:
    return Op(name, "dropout", shape, shape, attrs=(("rate", rate),))


def _pool(name: str, shape: Shape, mode: str, kernel: int, stride: int, padding: int) -> Op:
    c, h, w = shape
    out = (c, window_out(h, kernel, stride, padding), window_out(w, kernel, stride, padding))
    return Op(name, "pool", shape, out, attrs=(("mode", mode), ("kernel", kernel), ("stride", stride),
                                               ("padding", padding), ("global", False)))


def stem_ops(stem: Stem, shape: Shape) -> Iterator[tuple[Op, Any]]:
    """The stem's ops with the network op that caused each (for its span).

    Ids count ops of one kind (conv0 norm0 relu0 pool0, then conv1 ...), torchvision's names.
    """
    counts: dict[str, int] = {}

    def name(prefix: str) -> str:
        i = counts.get(prefix, 0)
        counts[prefix] = i + 1
        return f"{prefix}{i}"

    for op in stem.ops:
        if isinstance(op, Conv):
            n = name("conv")
            out = _conv(n, shape, op.out_channels, op.kernel, op.stride, op.padding, op.bias,
                        f"features.{n}")
        elif isinstance(op, Norm):
            n = name("norm")
            out = _norm(n, shape, f"features.{n}")
        elif isinstance(op, ReLU):
            out = _relu(name("relu"), shape)
        elif isinstance(op, Pool):
            out = _pool(name("pool"), shape, op.mode, op.kernel, op.stride, op.padding)
        elif isinstance(op, Dropout):
            out = _drop(name("drop"), shape, op.rate)
        else:  # pragma: no cover - network.StemOp is a closed union
            raise TypeError(f"unknown stem op {op!r}")
        yield out, op
        shape = out.out_shape


def layer_ops(block: DenseBlock, cin: int, h: int, w: int, module: str | None) -> tuple[Op, ...]:
    """The ops of one dense layer after its concatenation, in execution order.

    Pre-activation runs BN-ReLU-Conv per conv, post-activation Conv-BN-ReLU; dropout ends each
    unit. With a bottleneck the `…1` ops are the 1x1 conv to bottleneck·k channels and the `…2`
    ops the 3x3 conv to k; without one, the layer has only the `…1` ops with the 3x3 conv.
    """
    k = block.growth
    convs = ([(block.bottleneck * k, 1, 0), (k, 3, 1)] if block.bottleneck else [(k, 3, 1)])
    ops: list[Op] = []
    shape: Shape = (cin, h, w)
    prefix = f"{module}." if module else ""
    for i, (cout, kernel, padding) in enumerate(convs, start=1):
        conv = _conv(f"conv{i}", shape, cout, kernel, 1, padding, block.bias, f"{prefix}conv{i}")
        if block.order == "pre":
            ops += [_norm(f"norm{i}", shape, f"{prefix}norm{i}"), _relu(f"relu{i}", shape), conv]
        else:
            ops += [conv, _norm(f"norm{i}", conv.out_shape, f"{prefix}norm{i}"),
                    _relu(f"relu{i}", conv.out_shape)]
        shape = conv.out_shape
        if block.dropout > 0:
            ops.append(_drop(f"drop{i}", shape, block.dropout))
    return tuple(ops)


def transition_ops(t: Transition, shape: Shape, module: str | None) -> tuple[Op, ...]:
    cout = transition_channels(shape[0], t)
    prefix = f"{module}." if module else ""
    ops = [_norm("norm", shape, f"{prefix}norm"), _relu("relu", shape),
           _conv("conv", shape, cout, 1, 1, 0, t.bias, f"{prefix}conv")]
    mid = ops[-1].out_shape
    if t.dropout > 0:
        ops.append(_drop("drop", mid, t.dropout))
    ops.append(_pool("pool", mid, t.pool.mode, t.pool.kernel, t.pool.stride, t.pool.padding))
    return tuple(ops)


def head_ops(head: Head, shape: Shape, norm_module: str) -> tuple[Op, ...]:
    """(BN-ReLU) → pool → flatten → (dropout) → Linear; `norm_module` is torchvision's norm5."""
    ops: list[Op] = []
    if head.norm:
        ops += [_norm("norm", shape, norm_module), _relu("relu", shape)]
    c = shape[0]
    if head.window is None:
        pool = Op("pool", "pool", shape, (c, 1, 1),
                  attrs=(("mode", head.pool), ("kernel", None), ("stride", None), ("padding", 0),
                         ("global", True)))
    else:
        kernel, stride = head.window
        pool = _pool("pool", shape, head.pool, kernel, stride, 0)
    flat = (numel(pool.out_shape),)
    ops += [pool, Op("flatten", "flatten", pool.out_shape, flat)]
    if head.dropout > 0:
        ops.append(_drop("drop", flat, head.dropout))
    ops.append(Op("linear", "linear", flat, (head.classes,), linear_params(flat[0], head.classes), 0,
                  linear_macs(flat[0], head.classes), "classifier",
                  (("in_features", flat[0]), ("out_features", head.classes))))
    return tuple(ops)


# --- closed-form block totals --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BlockTotals:
    params: int
    buffers: int
    macs: int
    ops: int          # op nodes per layer (norm, relu, conv, dropout), without concat and x_ℓ
    convs: int        # conv layers in the block (the paper's depth)


def block_totals(block: DenseBlock, k0: int, h: int, w: int) -> BlockTotals:
    """Totals over a block's layers in O(1), whatever its depth.

    A layer's params, buffers and MACs are affine in its input channels, and those grow by k per
    layer, so the totals are L·f(1) + (f(2) − f(1))·L(L−1)/2 with f(ℓ) read off `layer_ops` of the
    first two layers: the same functions the graph uses, so prediction and graph cannot drift.
    """
    big_l = block.layers
    first = layer_ops(block, k0, h, w, None)
    second = layer_ops(block, k0 + block.growth, h, w, None)
    pairs = big_l * (big_l - 1) // 2

    def total(attr: str) -> int:
        f1 = sum(getattr(o, attr) for o in first)
        f2 = sum(getattr(o, attr) for o in second)
        return big_l * f1 + (f2 - f1) * pairs

    return BlockTotals(total("params"), total("buffers"), total("macs"), len(first),
                       big_l * sum(o.kind == "conv" for o in first))


@dataclass(frozen=True, slots=True)
class Prediction:
    """What the graph will hold, computed from the Network alone (no graph)."""

    params: int
    nodes: int
    connections: int
    largest_block: tuple[int, int] | None  # (block index, layers) of the deepest block


def predict(network: Network, *, node_limit: int | None = None) -> Prediction:
    """Params, node and dense-edge counts without building the graph, O(number of stages).

    Spatial sizes do not affect params, so maps are taken as 1x1 here (costs stay finite even
    for absurd inputs). Stops early once `node_limit` is passed: a refused spec costs nothing.
    Assumes channel counts are valid (callers check E201 first).
    """
    params, nodes, connections = 0, 2, 0
    shape: Shape = network.input
    for op, _ in stem_ops(network.stem, (network.input[0], 1, 1)):
        params += op.params
        nodes += 1
        shape = op.out_shape
    c = shape[0]
    largest: tuple[int, int] | None = None
    for stage in network.stages:
        if isinstance(stage, DenseBlock):
            t = block_totals(stage, c, 1, 1)
            params += t.params
            big_l = stage.layers
            nodes += 2 + big_l * (2 + t.ops)  # x0, out; per layer concat, x_ℓ and its ops
            connections += big_l * (big_l + 1) // 2
            if largest is None or big_l > largest[1]:
                largest = (stage.index, big_l)
            c = block_out_channels(c, stage)
        else:
            ops = transition_ops(stage, (c, 2, 2), None)
            params += sum(o.params for o in ops)
            nodes += len(ops)
            c = ops[-1].out_shape[0]
        if node_limit is not None and nodes > node_limit:
            break
    if network.head is not None:
        # The classifier's width depends on the map size only with a fixed window; the real
        # figure comes from the graph, this bound only guards resources.
        params += sum(o.params for o in head_ops(network.head, (c, 1, 1), "norm"))
        nodes += 6
    return Prediction(params, nodes, connections, largest)
