"""The op lists every stage lowers to, and the sizes and totals computed from them.

Per-op figures live in the op table (`ops.py`); this module decides *which* ops a stem, a dense
layer, a transition and a head lower to, in execution order. Everything is integer arithmetic on
plain values (no graph, no torch). A network is lowered once (`lower`), and everything reads that
one lowering: `graph`'s checks and spatial plan, `predict` (totals before any graph is built, to
refuse absurd specs in microseconds), the graph builder, and `nn`'s modules and export. The
lowering tolerates what the checks refuse (a window larger than its map gives sizes of 0 or less,
a transition may emit no channels), and a block's layers are lowered on first use (`Layers`), so
the size guard reads a million-layer block's first layer without making the others.

Conventions (docs/graph.md, docs/analysis.md):
- params count BN's affine weight and bias; buffers count BN's running mean and var;
- MACs: conv `Cout·(Cin/groups)·∏kernel·∏out`, linear `in·out`; BN, ReLU, pooling, concat
  and dropout cost 0, as in torch.utils.flop_counter (which counts FLOPs = 2·MACs).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator, Sequence, Union, assert_never, overload

from ..language import network as n
from ..language.network import DenseBlock, Head, Network, Stem, Transition
from .connectivity import Table, table
from .ops import (
    Activation,
    Conv,
    Dropout,
    Flatten,
    GroupNorm,
    Linear,
    Norm,
    Op,
    Pool,
    ReLU,
    Shape,
    kind_of,
    numel,
    window_out,
)

__all__ = ["DTYPE_BYTES", "Layers", "Op", "Shape", "block_totals", "dtype_bytes", "drops_input", "head_ops",
           "in_place_where_safe", "layer_ops", "lower", "numel", "predict", "stem_ops", "transition_ops", "window_out"]

DTYPE_BYTES: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "double": 8, "float": 4, "half": 2,
}


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(sorted(DTYPE_BYTES))}") from None


# --- sizes -------------------------------------------------------------------------------------

def drops_input(size: int, kernel: int, stride: int, padding: int, ceil: bool = False) -> bool:
    """True when the last real row (not padding) is covered by no window.

    Windows cover padded positions [i·s, i·s + k) for i < out; the data sits at [p, p + size).
    A stride-2 conv that skips only a padding row (DenseNet's 7x7 stem at 224) drops nothing.
    """
    out = window_out(size, kernel, stride, padding, ceil)
    return out >= 1 and (out - 1) * stride + kernel < padding + size


def transition_channels(m: int, t: Transition) -> int:
    """Channels a transition emits from m: its explicit count, or ⌊θ·m⌋ in exact arithmetic."""
    if t.channels is not None:
        return t.channels
    assert t.compression is not None
    return int(Fraction(t.compression) * m // 1)


def block_out_channels(k0: int, block: DenseBlock) -> int:
    """Channels the block emits from an input of k0, read off its connectivity table (DenseNet:
    k0 + k·L)."""
    return table(block).out_channels(k0)


def layer_in_channels(k0: int, block: DenseBlock, layer: int) -> int:
    """Channels entering layer ℓ (1-based): the widths of what it reads (DenseNet: k0 + k·(ℓ−1))."""
    return table(block).in_channels(k0, layer)


def _at(shape: Shape, channels: int) -> Shape:
    return (channels, *shape[1:])


# --- op lists ----------------------------------------------------------------------------------

def stem_ops(stem: Stem, shape: Shape) -> Iterator[tuple[Op, n.StemOp]]:
    """The stem's ops with the network op that caused each (for its span).

    Ids count ops of one kind (conv0 norm0 relu0 pool0, then conv1 ...), torchvision's names.
    """
    counts: dict[str, int] = {}

    def name(prefix: str) -> str:
        i = counts.get(prefix, 0)
        counts[prefix] = i + 1
        return f"{prefix}{i}"

    for op in stem.ops:
        out: Op
        match op:
            case n.Conv():
                nm = name("conv")
                out = Conv.make(nm, shape, op.out_channels, op.kernel, op.stride, op.padding, op.bias,
                                f"features.{nm}", op.groups)
            case n.Norm():
                nm = name("norm")
                out = Norm.make(nm, shape, f"features.{nm}")
            case n.ReLU():
                out = ReLU.make(name("relu"), shape)
            case n.Activation():
                out = Activation.make(name("act"), shape, op.fn)
            case n.Pool():
                out = Pool.make(name("pool"), shape, op.mode, op.kernel, op.stride, op.padding, op.ceil)
            case n.Dropout():
                out = Dropout.make(name("drop"), shape, op.rate)
            case n.Linear():
                nm = name("linear")
                out = Linear.make(nm, shape, op.out_features, f"features.{nm}", op.bias)
            case _:
                assert_never(op)
        yield out, op
        shape = out.out_shape


def layer_ops(block: DenseBlock, shape: Shape, module: str | None, width: int | None = None) -> tuple[Op, ...]:
    """The ops of one dense layer after its concatenation, in execution order; `shape` is the
    concatenated input's, `width` the channels the layer adds (default the block's growth; a
    table with per-layer widths, HarDNet's, gives each layer its own).

    Pre-activation runs BN-ReLU-Conv per conv, post-activation Conv-BN-ReLU; dropout ends each
    unit. With a bottleneck the `…1` ops are the 1x1 conv to bottleneck·k channels and the `…2`
    ops the 3x3 conv to k; without one, the layer has only the `…1` ops with the 3x3 conv.
    A separable layer (HarDNet-DS, post-activation only) has a 1x1 conv to k as its `…1` ops
    and a depthwise 3x3 conv (groups k) with its norm and no activation as its `…2` ops.
    A block of linear layers (an MLP's) has the same recipe with `linear{i}` for `conv{i}`.
    """
    k = block.growth if width is None else width
    half: n.Axes = (tuple(x // 2 for x in block.kernel) if isinstance(block.kernel, tuple)
                    else block.kernel // 2)
    # (out channels, kernel, padding, groups, activated): the growth conv keeps the size
    grow = (k, block.kernel, half, block.groups, True)
    convs: list[tuple[int, n.Axes, n.Axes, int, bool]]
    if block.separable:
        convs = [(k, 1, 0, 1, True), (k, block.kernel, half, k, False)]
    elif block.bottleneck:
        convs = [(block.bottleneck * k, 1, 0, 1, True), grow]
    else:
        convs = [grow]
    ops: list[Op] = []
    prefix = f"{module}." if module else ""
    for i, (cout, kernel, padding, groups, activated) in enumerate(convs, start=1):
        conv = _unit(block, i, shape, cout, kernel, padding, groups, prefix)
        act = _activation(block, i, shape if block.order == "pre" else conv.out_shape) if activated else ()
        if block.order == "pre":
            ops += [*_norm(block, i, shape, prefix), *act, conv]
        else:
            ops += [conv, *_norm(block, i, conv.out_shape, prefix), *act]
        shape = conv.out_shape
        if block.dropout > 0:
            ops.append(Dropout.make(f"drop{i}", shape, block.dropout))
    # a layer reads the concatenation (in layer 1 the block's input itself, which every later
    # layer reads) and, recomputed, keeps its conv outputs
    return in_place_where_safe(ops, input_shared=True, recomputed=True)


def _norm(block: DenseBlock, i: int, shape: Shape, prefix: str) -> tuple[Op, ...]:
    """`norm{i}` as the block's `norm` says (BN by default, torchvision's names), or no op."""
    name, module = f"norm{i}", f"{prefix}norm{i}"
    match block.norm:
        case "batch":
            return (Norm.make(name, shape, module),)
        case "none":
            return ()
        case "group" | "instance" | "layer" as style:
            groups = {"group": block.norm_groups, "instance": shape[0], "layer": 1}[style]
            return (GroupNorm.make(name, shape, module, style, groups),)
        case _:
            assert_never(block.norm)


def _unit(block: DenseBlock, i: int, shape: Shape, cout: int, kernel: n.Axes, padding: n.Axes, groups: int,
          prefix: str) -> Op:
    """The layer's i-th weighted op: `conv{i}` on maps, `linear{i}` (fully connected, to the same
    width) in a block of linear layers, whose input is a vector (an MLP)."""
    if block.kind == "linear":
        return Linear.make(f"linear{i}", shape, cout, f"{prefix}linear{i}", block.bias)
    return Conv.make(f"conv{i}", shape, cout, kernel, 1, padding, block.bias, f"{prefix}conv{i}", groups)


def _activation(block: DenseBlock, i: int, shape: Shape) -> tuple[Op, ...]:
    """`relu{i}` (torchvision's name and in-place ReLU), `act{i}` for another activation, or no
    op for `activation=none`."""
    return _activation_op(block.activation, f"{i}", shape)


def _activation_op(fn: str, suffix: str, shape: Shape) -> tuple[Op, ...]:
    if fn == "none":
        return ()
    if fn == "relu":
        return (ReLU.make(f"relu{suffix}", shape),)
    return (Activation.make(f"act{suffix}", shape, fn),)


def in_place_where_safe(ops: Sequence[Op], *, input_shared: bool, recomputed: bool = False) -> tuple[Op, ...]:
    """The one rule for writing in place, which the model, the engine, the export and the
    analysis' memory model all read off the lowered ops: a ReLU overwrites the tensor it reads
    only when nothing else reads that tensor and nothing keeps it for backward.

    Looking back through what aliases its input (dropout, the identity in eval; a view; an
    in-place ReLU), the tensor is the chain's input when no op made it: the caller's for a stem,
    the concatenation or block input for a dense layer (`input_shared`); or a conv's (linear's)
    output, which a recomputed (memory-efficient) layer keeps for backward and torch refuses to
    see mutated (`recomputed`). Norms, pools and convs outside recomputed layers make tensors
    only the next op reads."""
    out: list[Op] = []
    for op in ops:
        if op.kind == "relu" and kind_of(op.kind).storage_of(op.attributes()) == "in_place":
            j = len(out) - 1
            while j >= 0 and kind_of(out[j].kind).storage_of(out[j].attributes()) in _ALIASING:
                j -= 1
            shared = input_shared if j < 0 else recomputed and kind_of(out[j].kind).saves_recomputed == "output"
            if shared:
                op = ReLU.make(op.name, op.in_shape, inplace=False)
        out.append(op)
    return tuple(out)


_ALIASING = ("view", "in_place", "identity_in_eval")  # an op whose output may be its input's storage


def transition_ops(t: Transition, shape: Shape, module: str | None) -> tuple[Op, ...]:
    """BN-ReLU-Conv1x1-(Dropout)-(Pool), or with `order=post` Conv1x1-BN-ReLU-(Dropout)-(Pool);
    `pool=depthwise` puts a depthwise conv (groups = channels) and its BN on the pool's window;
    on a vector (an MLP) the same with Linear, the projection to ⌊θ·m⌋ features. `activation`
    replaces the ReLU."""
    cout = transition_channels(shape[0], t)
    prefix = f"{module}." if module else ""
    project = (Linear.make("linear", shape, cout, f"{prefix}linear", t.bias) if len(shape) == 1
               else Conv.make("conv", shape, cout, 1, t.stride, 0, t.bias, f"{prefix}conv"))
    mid = project.out_shape
    ops: list[Op]
    if t.order == "pre":
        ops = [Norm.make("norm", shape, f"{prefix}norm"), *_activation_op(t.activation, "", shape), project]
    else:
        ops = [project, Norm.make("norm", mid, f"{prefix}norm"), *_activation_op(t.activation, "", mid)]
    if t.dropout > 0:
        ops.append(Dropout.make("drop", mid, t.dropout))
    if t.pool is not None and t.pool.mode == "depthwise":
        # HarDNet-DS downsamples with a learned depthwise conv and its norm, no activation
        conv = Conv.make("dwconv", mid, mid[0], t.pool.kernel, t.pool.stride, t.pool.padding, t.bias,
                         f"{prefix}dwconv", mid[0])
        ops += [conv, Norm.make("dwnorm", conv.out_shape, f"{prefix}dwnorm")]
    elif t.pool is not None:
        ops.append(Pool.make("pool", mid, t.pool.mode, t.pool.kernel, t.pool.stride, t.pool.padding, t.pool.ceil))
    return in_place_where_safe(ops, input_shared=True)


# torchvision's `DenseNet` names the final norm `norm5` whatever the number of blocks (its
# 3-block CIFAR models included), so their weights load.
HEAD_NORM = "features.norm5"


def head_ops(head: Head, shape: Shape) -> tuple[Op, ...]:
    """(BN-ReLU) → pool → flatten → (dropout) → Linear; a vector (an MLP's) is not pooled."""
    ops: list[Op] = []
    if head.norm:
        ops += [Norm.make("norm", shape, HEAD_NORM), ReLU.make("relu", shape)]
    if len(shape) > 1:
        if head.window is None:
            pool = Pool.make_global("pool", shape, head.pool)
        else:
            kernel, stride = head.window
            pool = Pool.make("pool", shape, head.pool, kernel, stride, 0)
        flat = Flatten.make("flatten", pool.out_shape)
        ops += [pool, flat]
        shape = flat.out_shape
    if head.dropout > 0:
        ops.append(Dropout.make("drop", shape, head.dropout))
    for j, width in enumerate(head.hidden, start=1):
        # hidden layers live in the model's `pre_logits` (timm's name for what precedes the
        # classifier), so `classifier` stays torchvision's single Linear
        fc = Linear.make(f"fc{j}", shape, width, f"pre_logits.fc{j}")
        shape = fc.out_shape
        ops += [fc, *_activation_op(head.activation, f"{j}", shape)]
        if head.dropout > 0:
            ops.append(Dropout.make(f"drop{j}", shape, head.dropout))
    ops.append(Linear.make("linear", shape, head.classes, "classifier"))
    return in_place_where_safe(ops, input_shared=True)


# --- the lowered network -------------------------------------------------------------------------

# What the shared-storage Function (nn/shared.py) runs at a layer's start: batch norm over the
# concatenation, ReLU, and the conv they feed (efficient mode keeps only that conv's output).
SHARED_ENTRY = ("norm", "relu", "conv")
# What efficient mode runs as a second Function when a shared layer's rest after its entry is
# exactly this (DenseNet-BC's norm2 relu2 conv2): it keeps only its input, the entry's conv
# output, and recomputes the BN-ReLU output in backward (`analysis.memory._recomputed` counts so).
RECOMPUTED_TAIL = ("norm", "relu", "conv")

@dataclass(frozen=True, slots=True)
class LoweredStem:
    ops: tuple[Op, ...]
    spans: tuple[Any, ...]      # the span of the network op behind each op
    source: Stem
    name = "stem"

    @property
    def tap(self) -> int | None:
        """Index of the op whose output is the stem's feature tap, or None without one.

        timm taps DenseNet's stem before its max pool (norm0 with the ReLU, reduction 2): here
        the last op before the stem's trailing pools and dropouts, so a stem without a pool is
        tapped at its output, and an empty stem, or one of pools only, has no tap.
        """
        i = len(self.ops)
        while i and self.ops[i - 1].kind in ("pool", "dropout"):
            i -= 1
        return i - 1 if i else None


class Layers(Sequence[tuple[Op, ...]]):
    """A dense block's layers (each one's ops after its concatenation), every layer lowered on
    first use and kept. The checks and the size guard read a block's first layers (a block of a
    million layers is refused after lowering one), the graph and the model read them all, and no
    layer is lowered twice."""

    __slots__ = ("_block", "_shape", "_table", "_made")

    def __init__(self, block: DenseBlock, shape: Shape, t: Table):
        self._block, self._shape, self._table = block, shape, t
        self._made: dict[int, tuple[Op, ...]] = {}

    def __len__(self) -> int:
        return self._block.layers

    @overload
    def __getitem__(self, i: int) -> tuple[Op, ...]: ...

    @overload
    def __getitem__(self, i: slice) -> tuple[tuple[Op, ...], ...]: ...

    def __getitem__(self, i: int | slice) -> tuple[Op, ...] | tuple[tuple[Op, ...], ...]:
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(len(self))))
        j = i + len(self) if i < 0 else i
        if not 0 <= j < len(self):
            raise IndexError(f"layer index {i} out of range for {len(self)} layers")
        ops = self._made.get(j)
        if ops is None:
            layer, t = j + 1, self._table
            ops = self._made[j] = layer_ops(
                self._block, _at(self._shape, t.in_channels(self._shape[0], layer)),
                f"features.denseblock{self._block.index}.denselayer{layer}", t.widths[j])
        return ops

    def __iter__(self) -> Iterator[tuple[Op, ...]]:
        return (self[j] for j in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Layers):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Layers({self._block.layers} of denseblock{self._block.index}, {len(self._made)} lowered)"


@dataclass(frozen=True, slots=True)
class LoweredBlock:
    layers: Layers                       # each dense layer's ops after its concatenation
    in_shape: Shape
    out_shape: Shape
    source: DenseBlock
    table: Table                         # who each layer reads, its width, what the block emits

    @property
    def name(self) -> str:
        return f"denseblock{self.source.index}"

    @property
    def shared(self) -> bool:
        """Whether the block trains through one shared buffer (Pleiss et al.): its table is
        DenseNet's, so every layer reads a prefix of the buffer, and every layer opens with the
        ops the shared-storage Function runs (`SHARED_ENTRY`). The model takes that path and the
        memory model counts it from this one answer."""
        return (self.table.dense and bool(self.layers)
                and all(tuple(op.kind for op in ops[:len(SHARED_ENTRY)]) == SHARED_ENTRY for ops in self.layers))


@dataclass(frozen=True, slots=True)
class LoweredTransition:
    ops: tuple[Op, ...]
    source: Transition

    @property
    def name(self) -> str:
        return f"transition{self.source.index}"


@dataclass(frozen=True, slots=True)
class LoweredHead:
    ops: tuple[Op, ...]
    source: Head
    name = "head"


Lowered = Union[LoweredStem, LoweredBlock, LoweredTransition, LoweredHead]


def lower_block(block: DenseBlock, shape: Shape) -> LoweredBlock:
    """The block at an input of `shape`; its layers are lowered as they are read (`Layers`)."""
    t = table(block)
    return LoweredBlock(Layers(block, shape, t), shape, _at(shape, t.out_channels(shape[0])), block, t)


def lower(network: Network) -> tuple[Lowered, ...]:
    """The network as op lists, stage by stage, the stem first and the head (if any) last: what
    the checks, the prediction, the graph, the model and the `.py` export all read. Lower once and
    pass the result on. It tolerates what `graph.check` refuses (the ops then hold sizes of 0 or
    less, or no channels), so the checks read it too; only a conv on a vector (E210) has no
    lowering."""
    shape: Shape = tuple(network.input)
    stem = list(stem_ops(network.stem, shape))
    result: list[Lowered] = [LoweredStem(in_place_where_safe([op for op, _ in stem], input_shared=True),
                                         tuple(src.span for _, src in stem), network.stem)]
    if stem:
        shape = stem[-1][0].out_shape
    for stage in network.stages:
        match stage:
            case DenseBlock():
                block = lower_block(stage, shape)
                result.append(block)
                shape = block.out_shape
            case Transition():
                transition = LoweredTransition(
                    transition_ops(stage, shape, f"features.transition{stage.index}"), stage)
                result.append(transition)
                shape = transition.ops[-1].out_shape
            case _:
                assert_never(stage)
    if network.head is not None:
        result.append(LoweredHead(head_ops(network.head, shape), network.head))
    return tuple(result)


# --- closed-form block totals --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BlockTotals:
    params: int
    buffers: int
    macs: int
    ops: int          # op nodes per layer (norm, relu, conv, dropout), without concat and x_ℓ


def block_totals(block: LoweredBlock) -> BlockTotals:
    """Totals over a lowered block's layers in O(layers), reading (so lowering) at most two
    layers per width.

    A layer's params, buffers and MACs are affine in its input channels for a given width, so
    for each width w of the table the totals are n·f(c_a) + slope·(Σ c − n·c_a) over its n
    layers, with f read off the layers with the fewest and the most input channels: the graph's
    own layers, so prediction and graph cannot drift.
    """
    t = block.table
    k0 = block.in_shape[0]
    groups: dict[int, list[tuple[int, int]]] = {}  # width: (input channels, layer index) of each layer
    for j in range(block.source.layers):
        groups.setdefault(t.widths[j], []).append((t.in_channels(k0, j + 1), j))
    totals = {"params": 0, "buffers": 0, "macs": 0}
    ops = 0
    for members in groups.values():
        (a, ja), (b, jb) = min(members), max(members)
        first = block.layers[ja]
        second = block.layers[jb] if b != a else first
        ops = len(first)
        n_ = len(members)
        sum_c = sum(c for c, _ in members)
        for attr in totals:
            fa = sum(getattr(o, attr) for o in first)
            slope = (sum(getattr(o, attr) for o in second) - fa) // (b - a) if b != a else 0
            totals[attr] += n_ * fa + slope * (sum_c - n_ * a)
    return BlockTotals(totals["params"], totals["buffers"], totals["macs"], ops)


@dataclass(frozen=True, slots=True)
class Prediction:
    """What the graph will hold, computed from the Network alone (no graph)."""

    params: int
    nodes: int
    connections: int
    largest_block: tuple[int, int, int] | None  # (index, layers, connections) of the most connected block


def predict(network: Network, *, lowered: Sequence[Lowered] | None = None,
            node_limit: int | None = None) -> Prediction:
    """Params, node and dense-edge counts without building the graph, O(number of stages), read
    off `lowered` (`lower(network)`, made here when not given).

    A block is counted from its table and at most two layers per width (`block_totals`), so a
    block of a million layers costs one lowered layer. Stops early once `node_limit` is passed
    (a block past it is counted without its totals): a refused spec costs nothing. Channel
    counts must be valid (callers check E201 first); the sizes need not be, params do not
    depend on them except through a fixed head window.
    """
    stages = tuple(lower(network) if lowered is None else lowered)
    head = stages[-1] if isinstance(stages[-1], LoweredHead) else None  # lower() puts it last
    params, nodes, connections = 0, 2, 0
    largest: tuple[int, int, int] | None = None
    for stage in stages[:-1] if head is not None else stages:
        match stage:
            case LoweredStem():
                params += sum(op.params for op in stage.ops)
                nodes += len(stage.ops)
                continue
            case LoweredBlock():
                big_l = stage.source.layers
                per_layer = len(stage.layers[0]) if big_l else 0
                nodes += 2 + big_l * (2 + per_layer)  # x0, out; per layer concat, x_ℓ and its ops
                links = stage.table.connections
                connections += links
                if largest is None or links > largest[2]:
                    largest = (stage.source.index, big_l, links)
                if node_limit is None or nodes <= node_limit:
                    params += block_totals(stage).params
            case LoweredTransition():
                params += sum(o.params for o in stage.ops)
                nodes += len(stage.ops)
            case LoweredHead():
                raise AssertionError("lower() puts the head last")
            case _:
                assert_never(stage)
        if node_limit is not None and nodes > node_limit:
            break
    if head is not None:
        params += sum(o.params for o in head.ops)
        nodes += 6
    return Prediction(params, nodes, connections, largest)
