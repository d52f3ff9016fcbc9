"""Lowering a `Network` to the architecture graph of docs/graph.md, and the checks that must pass
before a graph can be built at all.

`check(network)` walks the network with plain integers (channels, then H and W through the few
ops that change them) and reports what would make the graph meaningless or unbuildable: E201
no channels, E202/E203 maps too small, W204 dropped rows, E304 too large to build. It never
builds a graph, so a block of a million layers is refused in microseconds. `lower(network)`
runs `check` and then builds the graph node by node from the op lists in `costs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import networkx as nx

from . import costs
from . import diagnostics as d
from .network import Conv, DenseBlock, Network, Norm, Pool, Transition
from .source import Span

# Beyond these a graph would take seconds and gigabytes to build; no real DenseNet comes close
# (DenseNet-264: 1,200 nodes, 3,440 dense connections). docs/analysis.md lists them.
MAX_NODES = 200_000
MAX_CONNECTIONS = 250_000


# --- the size chain --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Window:
    """An op that can change H and W, or (kernel None) a BN whose map must hold > 1 value."""

    node: str                  # the graph node it becomes, e.g. "transition1.pool"
    label: str                 # "avg pool 2x2 stride 2"
    kernel: int | None
    stride: int = 1
    padding: int = 0
    span: Span | None = None


def spatial_plan(network: Network) -> tuple[Window, ...]:
    """The ops that shrink maps, in order, with markers for batch norms (kernel None).

    Dense layers keep H and W (3x3 with padding 1, 1x1) and transitions' convs are 1x1, so only
    stem convs and pools, transition pools and a fixed head window appear.
    """
    plan: list[Window] = []
    counts: dict[type, int] = {}
    for op in network.stem.ops:
        # Same numbering as costs.stem_ops: ops of one kind count together (conv0, conv1 ...).
        i = counts.get(type(op), 0)
        counts[type(op)] = i + 1
        span = op.span or network.stem.span
        if isinstance(op, Conv):
            plan.append(Window(f"stem.conv{i}", f"conv {op.kernel}x{op.kernel} stride {op.stride} "
                               f"padding {op.padding}", op.kernel, op.stride, op.padding, span))
        elif isinstance(op, Pool):
            plan.append(Window(f"stem.pool{i}", f"{op.mode} pool {op.kernel}x{op.kernel} stride "
                               f"{op.stride} padding {op.padding}", op.kernel, op.stride, op.padding,
                               span))
        elif isinstance(op, Norm):
            plan.append(Window(f"stem.norm{i}", "batch norm", None, span=span))
    for stage in network.stages:
        if isinstance(stage, DenseBlock):
            if stage.layers > 0:
                plan.append(Window(f"denseblock{stage.index}", "batch norm", None, span=stage.span))
        else:
            p = stage.pool
            plan.append(Window(f"transition{stage.index}.norm", "batch norm", None, span=stage.span))
            plan.append(Window(f"transition{stage.index}.pool", f"{p.mode} pool {p.kernel}x{p.kernel} "
                               f"stride {p.stride} padding {p.padding}", p.kernel, p.stride, p.padding,
                               p.span or stage.span))
    head = network.head
    if head is not None:
        if head.norm:
            plan.append(Window("head.norm", "batch norm", None, span=head.span))
        if head.window is not None:
            kernel, stride = head.window
            plan.append(Window("head.pool", f"{head.pool} pool {kernel}x{kernel} stride {stride}",
                               kernel, stride, 0, head.span))
    return tuple(plan)


def _fits(plan: Sequence[Window], size: int, *, train: bool) -> bool:
    """Whether a size×size input passes every window (and, for training with batch 1, every BN
    sees more than one value per channel)."""
    for w in plan:
        if w.kernel is None:
            if train and size * size <= 1:
                return False
            continue
        if size + 2 * w.padding < w.kernel:
            return False
        size = costs.window_out(size, w.kernel, w.stride, w.padding)
    return True


def min_input_size(plan: Sequence[Window], *, train: bool = False) -> int:
    """The smallest square input the plan accepts (binary search: output sizes are monotone in
    the input size, so the accepted sizes are all sizes from the minimum up)."""
    hi = 1
    while not _fits(plan, hi, train=train):
        hi *= 2
    lo = hi // 2 + 1 if hi > 1 else 1
    while lo < hi:
        mid = (lo + hi) // 2
        if _fits(plan, mid, train=train):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _fraction_text(x) -> str:
    """`Fraction(1, 100)` → `0.01` (as the user wrote it); `Fraction(1, 3)` stays `1/3`."""
    from fractions import Fraction
    x = Fraction(x)
    d = x.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    return f"{float(x):g}" if d == 1 and len(f"{float(x):g}") < 12 else str(x)


def _hw(h: int, w: int) -> str:
    return f"{h}x{w}"


# --- checks ----------------------------------------------------------------------------------------

def check(network: Network) -> list[d.Diagnostic]:
    """E201, E202, E203, W204 and E304, from the Network alone (no graph is built)."""
    diags = _check_channels(network)
    if not diags:
        diags += _check_size(network)
    diags += _check_spatial(network)
    return diags


def _check_channels(network: Network) -> list[d.Diagnostic]:
    diags: list[d.Diagnostic] = []
    c = network.input[0]
    source = f"the input has {c} channels"
    for op in network.stem.ops:
        if isinstance(op, Conv):
            c = op.out_channels
            source = f"the stem emits {c} channels"
    for stage in network.stages:
        if isinstance(stage, DenseBlock):
            out = costs.block_out_channels(c, stage)
            source = (f"denseblock{stage.index} emits {c} + {stage.growth}·{stage.layers} = {out} "
                      "channels")
            c = out
            continue
        out = costs.transition_channels(c, stage)
        if out < 1:
            if stage.channels is not None:
                why = f"transition{stage.index} is set to emit {out} channels"
            else:
                theta = _fraction_text(stage.compression)
                why = f"{source}; transition{stage.index} keeps ⌊{theta}·{c}⌋ = {out}"
            need = (f"compression of at least {1 / c:.3g}" if stage.channels is None and c > 0
                    else "at least 1 output channel")
            diags.append(d.Diagnostic(d.NO_CHANNELS, f"transition{stage.index} emits no channels: {why}",
                                      stage.span, f"use a {need}"))
            return diags  # later channel counts would be meaningless
        source = f"transition{stage.index} emits {out} channels"
        c = out
    return diags


def _check_size(network: Network) -> list[d.Diagnostic]:
    p = costs.predict(network, node_limit=MAX_NODES)
    if p.largest_block is not None:
        index, layers = p.largest_block
        pairs = layers * (layers + 1) // 2
        if pairs > MAX_CONNECTIONS:
            block = next(b for b in network.blocks if b.index == index)
            return [d.Diagnostic(
                d.TOO_LARGE, f"denseblock{index} has {layers:,} layers: its graph would hold "
                f"{layers:,}·{layers + 1:,}/2 = {pairs:,} dense connections (densedsl analyses up "
                f"to {MAX_CONNECTIONS:,})", block.span, "split the block or use fewer layers")]
    if p.connections > MAX_CONNECTIONS or p.nodes > MAX_NODES:
        return [d.Diagnostic(
            d.TOO_LARGE, f"the network's graph would hold {'more than ' if p.nodes > MAX_NODES else ''}"
            f"{p.nodes:,} nodes and {p.connections:,} dense connections (densedsl analyses up to "
            f"{MAX_NODES:,} nodes and {MAX_CONNECTIONS:,} connections)", network.span,
            "use fewer or shallower blocks")]
    return []


def _check_spatial(network: Network) -> list[d.Diagnostic]:
    """Walk H and W through the windows; stop at the first map that cannot be computed."""
    diags: list[d.Diagnostic] = []
    _, h, w = network.input
    chain = [_hw(h, w)]
    plan = spatial_plan(network)
    for win in plan:
        if win.kernel is None:
            continue
        k, s, p = win.kernel, win.stride, win.padding
        if h + 2 * p < k or w + 2 * p < k:
            history = " → ".join(chain)
            padded = f" padded to {_hw(h + 2 * p, w + 2 * p)}" if p else ""
            least = min_input_size(plan)
            hint = f"use an input of at least {least}x{least}, or remove a downsampling step"
            if h == 1 or w == 1:
                diags.append(d.Diagnostic(
                    d.TOO_SMALL, f"{win.node} ({win.label}) would shrink the {_hw(h, w)} map below "
                    f"1x1: {history} → nothing", win.span, hint))
            else:
                diags.append(d.Diagnostic(
                    d.KERNEL_TOO_LARGE, f"{win.node} has a {k}x{k} kernel, larger than its "
                    f"{_hw(h, w)} input{padded}: {history}", win.span, hint))
            return diags
        nh, nw = costs.window_out(h, k, s, p), costs.window_out(w, k, s, p)
        dropped = [axis for axis, n in (("rows", h), ("columns", w)) if costs.drops_input(n, k, s, p)]
        if dropped:
            diags.append(d.Diagnostic(
                d.UNEVEN_SIZE, f"{win.node} ({win.label}) drops the last {' and '.join(dropped)} of "
                f"its {_hw(h, w)} map ({_hw(h, w)} → {_hw(nh, nw)})", win.span,
                "choose an input size that divides evenly, or pad"))
        if (nh, nw) != (h, w):
            chain.append(f"{_hw(nh, nw)} ({win.node})")
        h, w = nh, nw
    return diags


# --- lowering ----------------------------------------------------------------------------------------

def lower(network: Network, *, checked: bool = False) -> nx.DiGraph:
    """The architecture graph of docs/graph.md; raises SpecError when `check` finds an error.

    `checked=True` skips `check` for a caller (analysis) that has just run it.
    """
    if not checked:
        d.raise_if_errors(check(network))
    return _Builder(network).build()


class _Builder:
    def __init__(self, network: Network):
        self.network = network
        self.g = nx.DiGraph(name=network.name, input_shape=tuple(network.input))

    def node(self, node_id: str, kind: str, stage: str, span: Span | None, in_shape, out_shape,
             params: int = 0, buffers: int = 0, macs: int = 0, module: str | None = None,
             attrs: Iterable = (), **extra) -> str:
        attrs_dict = dict(attrs)
        if module is not None:
            attrs_dict["module"] = module
        self.g.add_node(node_id, kind=kind, stage=stage, span=span, in_shape=tuple(in_shape),
                        out_shape=tuple(out_shape), params=params, buffers=buffers, macs=macs,
                        flops=2 * macs, **attrs_dict, **extra)
        return node_id

    def edge(self, u: str, v: str, kind: str = "flow") -> None:
        self.g.add_edge(u, v, kind=kind, shape=self.g.nodes[u]["out_shape"])

    def ops(self, prefix: str, stage: str, ops: Iterable[costs.Op], prev: str, span: Span | None,
            spans: Sequence[Span | None] | None = None, **extra) -> str:
        for i, op in enumerate(ops):
            node = self.node(f"{prefix}.{op.name}", op.kind, stage,
                             (spans[i] if spans is not None else None) or span, op.in_shape,
                             op.out_shape, op.params, op.buffers, op.macs, op.module, op.attrs, **extra)
            self.edge(prev, node)
            prev = node
        return prev

    def build(self) -> nx.DiGraph:
        net = self.network
        shape = tuple(net.input)
        prev = self.node("input", "input", "stem", net.input_span, shape, shape)
        stem = list(costs.stem_ops(net.stem, shape))
        if stem:
            prev = self.ops("stem", "stem", [op for op, _ in stem], prev, net.stem.span,
                            [src.span for _, src in stem])
            shape = stem[-1][0].out_shape
        for stage in net.stages:
            if isinstance(stage, DenseBlock):
                prev, shape = self.block(stage, prev, shape)
            else:
                prev, shape = self.transition(stage, prev, shape)
        if net.head is not None:
            ops = costs.head_ops(net.head, shape, f"features.norm{len(net.blocks) + 1}")
            prev = self.ops("head", "head", ops, prev, net.head.span)
            shape = ops[-1].out_shape
        out_stage = "head" if net.head is not None else self.g.nodes[prev]["stage"]
        self.node("output", "output", out_stage, net.head.span if net.head else None, shape, shape)
        self.edge(prev, "output")
        self.g.graph["output_shape"] = tuple(shape)
        return self.g

    def block(self, block: DenseBlock, prev: str, shape) -> tuple[str, tuple]:
        name = f"denseblock{block.index}"
        k0, h, w = shape
        x = self.node(f"{name}.x0", "feature", name, block.span, shape, shape, block=block.index,
                      layer=0)
        self.edge(prev, x)
        features = [x]
        for layer in range(1, block.layers + 1):
            cin = costs.layer_in_channels(k0, block, layer)
            lname = f"{name}.denselayer{layer}"
            concat = self.node(f"{lname}.concat", "concat", name, block.span, (cin, h, w), (cin, h, w),
                               block=block.index, layer=layer)
            for f in features:
                self.edge(f, concat, "dense")
            ops = costs.layer_ops(block, cin, h, w, f"features.{lname}")
            last = self.ops(lname, name, ops, concat, block.span, block=block.index, layer=layer)
            new = ops[-1].out_shape
            x = self.node(f"{name}.x{layer}", "feature", name, block.span, new, new,
                          block=block.index, layer=layer)
            self.edge(last, x)
            features.append(x)
        out_shape = (costs.block_out_channels(k0, block), h, w)
        out = self.node(f"{name}.out", "concat", name, block.span, out_shape, out_shape,
                        block=block.index)
        for f in features:
            self.edge(f, out, "concat")
        return out, out_shape

    def transition(self, t: Transition, prev: str, shape) -> tuple[str, tuple]:
        name = f"transition{t.index}"
        ops = costs.transition_ops(t, shape, f"features.{name}")
        spans = [t.pool.span if op.name == "pool" else None for op in ops]
        last = self.ops(name, name, ops, prev, t.span, spans)
        return last, ops[-1].out_shape
