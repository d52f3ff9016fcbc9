"""Lowering a `Network` to the architecture graph of docs/graph.md, and the checks that must pass
before a graph can be built at all.

`check(network)` lowers the network once (`lowering.lower`, which tolerates what the checks
refuse) and reads that lowering: the channels, then the map's size through the windows of the
spatial plan, and reports what would make the graph meaningless or unbuildable: E201 no
channels, E202/E203 maps too small, W204 dropped rows, E304 too large to build. It never builds
a graph, and a block's layers are lowered only as they are read, so a block of a million layers
is refused in microseconds. `check_and_lower` hands that lowering, its prediction and its plan
on; `lower(network)` runs it and builds the graph node by node from the same op lists."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence, assert_never, cast

from ..core import diagnostics as d
from ..core.source import Span
from ..core.units import dims_text, fraction_text, shape_text, size_text
from ..ir import connectivity, lowering
from ..language import network as n
from ..language.network import Axes, DenseBlock, Network, Transition, per_axis

if TYPE_CHECKING:  # networkx is imported only where a DiGraph is made (`to_networkx`)
    import networkx as nx

# Beyond these a graph would take many seconds and gigabytes to build; no real DenseNet comes
# close (DenseNet-264: 1,071 nodes, 3,355 dense connections). The connection cap admits one block
# of 1,413 layers (a 1,024-layer block analyses in about a second, 1,413 in about two:
# bench/bench_construct.py); docs/analysis.md and docs/errors.md state them.
MAX_NODES = 200_000
MAX_CONNECTIONS = 1_000_000


# --- the size chain --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Window:
    """An op that can change the map's size, or (kernel None) a BN whose map must hold > 1 value."""

    node: str                  # the graph node it becomes, e.g. "transition1.pool"
    label: str                 # "avg pool 2x2 stride 2"
    kernel: Axes | None  # one number for every axis, or one per axis (`per_axis` reads both)
    stride: Axes = 1
    padding: Axes = 0
    span: Span | None = None
    least: tuple[int, ...] = ()  # the smallest input length along each axis it accepts
    ceil: bool = False         # a pool's ceil_mode: sizes round up (`ops.window_out`)
    always: bool = False       # (kernel None) a norm that refuses one value at batch 1 in eval too


def _windows(stage: str, ops: Sequence[lowering.Op], spans: Sequence[Span | None]) -> Iterator[Window]:
    """The ops of a stage that slide a window or normalise, as the op table states them."""
    for op, span in zip(ops, spans):
        spec, a = op.spec, op.attributes()
        window = spec.window(a)
        if window is not None:
            yield Window(f"{stage}.{op.name}", spec.describe(a), *window, span=span,
                         least=spec.least_input(a), ceil=bool(a.get("ceil")))
        elif spec.normalises:
            yield Window(f"{stage}.{op.name}", spec.describe(a), None, span=span)


def spatial_plan(network: Network, lowered: Sequence[lowering.Lowered] | None = None) -> tuple[Window, ...]:
    """The ops that shrink maps, in order, with markers for batch norms (kernel None), read off
    `lowered` (`lowering.lower(network)`, made here when not given).

    Dense layers keep the map's size (odd kernels with padding k//2, 1x1), so only stem convs
    and pools, transition convs and pools and a fixed head window appear; a dense block stands for
    its first layer's norms (whose channel counts say whether a group norm has one channel per
    group), so the plan reads one layer of any block. Windows do not depend on the map they
    slide over, so the plan is the same at any input size (`min_input_size` searches it).
    """
    plan: list[Window] = []
    for stage in lowering.lower(network) if lowered is None else lowered:
        match stage:
            case lowering.LoweredStem():
                plan += _windows("stem", stage.ops, [span or stage.source.span for span in stage.spans])
            case lowering.LoweredBlock():
                if stage.source.layers > 0:
                    plan += _block_norms(stage)
            case lowering.LoweredTransition():
                t = stage.source
                # only a transition with a pool has an op named pool
                spans = [(cast(n.Pool, t.pool).span or t.span) if op.name == "pool" else t.span
                         for op in stage.ops]
                plan += _windows(stage.name, stage.ops, spans)
            case lowering.LoweredHead():
                plan += _windows("head", stage.ops, [stage.source.span] * len(stage.ops))
            case _:
                assert_never(stage)
    return tuple(plan)


def _block_norms(block: lowering.LoweredBlock) -> list[Window]:
    """One marker for a block's norms that refuse a single value at batch 1, or none (norm=none,
    or group norms with several channels per group): its first layer has the fewest channels."""
    fails: dict[str, str] = {}
    for op in block.layers[0]:
        when = op.spec.one_value_fails(op.attributes())
        if when is not None:
            fails.setdefault(when, op.spec.describe(op.attributes()))
    when = "always" if "always" in fails else "train" if fails else None
    if when is None:
        return []
    return [Window(block.name, fails[when], None, span=block.source.span, always=when == "always")]


def _fits(plan: Sequence[Window], size: int, rank: int, *, train: bool) -> bool:
    """Whether an input of `size` along every axis passes every window (and, for training with
    batch 1, every BN sees more than one value per channel)."""
    sizes = (size,) * rank
    for w in plan:
        if w.kernel is None:
            if (train or w.always) and lowering.numel(sizes) <= 1:
                return False
            continue
        if any(x < least for x, least in zip(sizes, w.least)):
            return False
        sizes = _slid(sizes, w)
    return True


def _slid(sizes: tuple[int, ...], w: Window) -> tuple[int, ...]:
    """The map's size along each axis after the window `w`."""
    assert w.kernel is not None  # the callers skip norm markers (kernel None)
    r = len(sizes)
    return tuple(lowering.window_out(x, k, s, p, w.ceil) for x, k, s, p in
                 zip(sizes, per_axis(w.kernel, r), per_axis(w.stride, r),
                     per_axis(w.padding, r)))


def min_input_size(plan: Sequence[Window], *, train: bool = False, rank: int = 2) -> int:
    """The smallest input side (the same along every axis) the plan accepts (binary search:
    output sizes are monotone in the input size, so the accepted sizes are all sizes from the
    minimum up). A feature vector (rank 0) has no axis to size: 1."""
    if rank == 0:
        return 1
    hi = 1
    while not _fits(plan, hi, rank, train=train):
        hi *= 2
    lo = hi // 2 + 1 if hi > 1 else 1
    while lo < hi:
        mid = (lo + hi) // 2
        if _fits(plan, mid, rank, train=train):
            hi = mid
        else:
            lo = mid + 1
    return lo


# Names of the data along each axis, for W204: what a window leaves uncovered.
_AXES = {1: ("samples",), 2: ("rows", "columns"), 3: ("slices", "rows", "columns")}
_NOUNS = {1: "signal", 2: "map", 3: "volume"}


# --- checks ----------------------------------------------------------------------------------------

def check(network: Network) -> list[d.Diagnostic]:
    """E210, E201, E202, E203, W204 and E304, before any graph is built."""
    return check_and_lower(network).diagnostics


@dataclass(frozen=True, slots=True)
class Checked:
    """What `check_and_lower` found and made, for the analysis to read rather than remake."""

    diagnostics: list[d.Diagnostic]
    lowered: tuple[lowering.Lowered, ...] | None      # None only for E210 (a conv on a vector)
    prediction: lowering.Prediction | None            # None when the channels are wrong (or E210)
    plan: tuple[Window, ...] = ()                     # `spatial_plan`, read off `lowered`


def check_and_lower(network: Network) -> Checked:
    """`check`, on the network's one lowering (`lowering.lower`), which it hands on with the
    closed-form `lowering.predict` and the spatial plan it read off it, so that the analysis
    builds its graph, its parameter ceiling and its minimum input size from the same lowering.
    The prediction is complete whenever the diagnostics hold no error: it stops early only past
    MAX_NODES, which is an E304."""
    diags = _check_data_kind(network)
    if diags:
        return Checked(diags, None, None)  # a conv on a vector has no meaningful size or channel chain
    lowered = lowering.lower(network)
    diags = _check_channels(network, lowered)
    prediction = None
    if not diags:
        prediction = lowering.predict(network, lowered=lowered, node_limit=MAX_NODES)
        diags += _check_size(network, prediction)
    plan = spatial_plan(network, lowered)
    diags += _check_spatial(network, plan)
    return Checked(diags, lowered, prediction, plan)


def _check_data_kind(network: Network) -> list[d.Diagnostic]:
    """E210: ops for maps on a feature vector (an MLP), or linear layers on a map. densedsl never
    flattens between stages, so the input's kind holds from the stem to the head."""
    vector = len(network.input) == 1
    data = (f"the input is a vector of {network.input[0]} features" if vector
            else f"the input is a {'x'.join(map(str, network.input))} map")
    hint = ("on a feature vector use linear layers: `linear N` in the stem, dense blocks of linear "
            "layers (the default for `input F`), transitions without a pool" if vector else
            "a map needs convolutions; linear layers apply to a feature vector (`input F`)")
    diags: list[d.Diagnostic] = []

    def refuse(what: str, needs: str, span: Span | None) -> None:
        diags.append(d.Diagnostic(d.WRONG_DATA_KIND, f"{what} needs {needs}, but {data}", span, hint))

    for op in network.stem.ops:
        if vector and isinstance(op, (n.Conv, n.Pool)):
            refuse(f"the stem's {'conv' if isinstance(op, n.Conv) else 'pool'}", "a map", op.span)
        elif not vector and isinstance(op, n.Linear):
            refuse("the stem's linear layer", "a feature vector", op.span)
    for stage in network.stages:
        match stage:
            case DenseBlock():
                if (stage.kind == "linear") != vector:
                    refuse(f"denseblock{stage.index} of {stage.kind} layers",
                           "a feature vector" if stage.kind == "linear" else "a map", stage.span)
            case Transition():
                if vector and (stage.pool is not None or stage.stride != 1):
                    refuse(f"transition{stage.index}'s {'pool' if stage.pool else 'stride'}", "a map",
                           stage.span)
            case _:
                assert_never(stage)
    if vector and network.head is not None and network.head.window is not None:
        refuse("the head's pooling window", "a map", network.head.span)
    return diags


def _check_channels(network: Network, lowered: Sequence[lowering.Lowered]) -> list[d.Diagnostic]:
    diags: list[d.Diagnostic] = []
    c = network.input[0]
    source = f"the input has {c} channels"
    for stage in lowered:
        match stage:
            case lowering.LoweredStem():
                if stage.ops and stage.ops[-1].out_shape[0] != c:
                    c = stage.ops[-1].out_shape[0]
                    source = f"the stem emits {c} channels"
            case lowering.LoweredBlock():
                block = stage.source
                if block.groups != 1 and (bad := _bad_groups(block, c)) is not None:
                    diags.append(bad)
                if block.norm == "group" and (bad := _bad_norm_groups(stage)) is not None:
                    diags.append(bad)
                table = stage.table
                out = table.out_channels(c)
                source = (f"denseblock{block.index} emits {c} + {block.growth}·{block.layers} = {out} channels"
                          if table.dense and block.widths is None and block.width_factor is None else
                          f"denseblock{block.index} emits {out} channels (x{', x'.join(map(str, table.emits))})")
                c = out
            case lowering.LoweredTransition():
                out = lowering.transition_channels(c, stage.source)
                if out < 1:
                    diags.append(_no_channels(stage.source, c, out, source))
                    return diags  # later channel counts would be meaningless
                source = f"transition{stage.source.index} emits {out} channels"
                c = out
            case lowering.LoweredHead():
                pass
            case _:
                assert_never(stage)
    return diags


def _bad_groups(block: DenseBlock, c: int) -> d.Diagnostic | None:
    """The first growth conv of `block` (fed `c` channels) whose channels `groups` does not divide."""
    g, table = block.groups, connectivity.table(block)
    for ell in range(1, block.layers + 1):
        k = table.widths[ell - 1]
        cin = block.bottleneck * k if block.bottleneck else table.in_channels(c, ell)
        what = (f"its bottleneck's {block.bottleneck}·{k} = {cin}" if block.bottleneck
                else f"its {cin} concatenated" if ell > 1 else f"its {cin}")
        for count, name in ((cin, f"{what} input channels"), (k, f"its {k} output channels (the growth)")):
            if count % g:
                return d.Diagnostic(
                    d.BAD_GROUPS, f"denseblock{block.index}.denselayer{ell}: groups={g} does not divide "
                    f"{name} ({count} = {count // g}·{g} + {count % g})", block.span,
                    "groups must divide the growth conv's input and output channels; without a "
                    "bottleneck the input grows by the growth rate each layer")
        if block.bottleneck and len(set(table.widths)) == 1:
            break  # every layer's growth conv has the same widths
    return None


def _bad_norm_groups(block: lowering.LoweredBlock) -> d.Diagnostic | None:
    """The first group norm of the lowered `block` whose channels `norm_groups` does not
    divide. In DenseNet's table a layer's norm widths are affine in the layer (c + k·(ℓ−1) or
    fixed), so when the first two layers divide, every later one does (and only those two are
    lowered); other tables are checked layer by layer."""
    source, table = block.source, block.table
    g = source.norm_groups
    uniform = table.prefix and len(set(table.widths)) <= 1
    for ell in range(1, (min(source.layers, 2) if uniform else source.layers) + 1):
        for op in block.layers[ell - 1]:
            count = op.in_shape[0]
            if op.kind == "groupnorm" and count % g:
                return d.Diagnostic(
                    d.BAD_GROUPS, f"denseblock{source.index}.denselayer{ell}.{op.name}: norm_groups={g} does "
                    f"not divide its {count} channels ({count} = {count // g}·{g} + {count % g})",
                    source.span, "norm_groups must divide every normalised width: the layer's input (it "
                    "grows by the growth rate each layer), the bottleneck's bottleneck·growth and the "
                    "growth rate")
    return None


def _no_channels(stage: Transition, c: int, out: int, source: str) -> d.Diagnostic:
    if stage.channels is not None:
        why = f"transition{stage.index} is set to emit {out} channels"
    else:
        assert stage.compression is not None  # a transition sets exactly one of channels and compression
        theta = fraction_text(stage.compression)
        why = f"{source}; transition{stage.index} keeps ⌊{theta}·{c}⌋ = {out}"
    need = (f"compression of at least {1 / c:.3g}" if stage.channels is None and c > 0
            else "at least 1 output channel")
    return d.Diagnostic(d.NO_CHANNELS, f"transition{stage.index} emits no channels: {why}",
                        stage.span, f"use a {need}")


def _check_size(network: Network, p: lowering.Prediction) -> list[d.Diagnostic]:
    if p.largest_block is not None:
        index, layers, pairs = p.largest_block
        if pairs > MAX_CONNECTIONS:
            block = next(b for b in network.blocks if b.index == index)
            count = (f"{layers:,}·{layers + 1:,}/2 = {pairs:,}" if pairs == layers * (layers + 1) // 2
                     else f"{pairs:,}")
            return [d.Diagnostic(
                d.TOO_LARGE, f"denseblock{index} has {layers:,} layers: its graph would hold "
                f"{count} dense connections (densedsl analyses up to {MAX_CONNECTIONS:,})", block.span,
                "split the block or use fewer layers")]
    if p.connections > MAX_CONNECTIONS or p.nodes > MAX_NODES:
        return [d.Diagnostic(
            d.TOO_LARGE, f"the network's graph would hold {'more than ' if p.nodes > MAX_NODES else ''}"
            f"{p.nodes:,} nodes and {p.connections:,} dense connections (densedsl analyses up to "
            f"{MAX_NODES:,} nodes and {MAX_CONNECTIONS:,} connections)", network.span,
            "use fewer or shallower blocks")]
    return []


def _check_spatial(network: Network, plan: Sequence[Window]) -> list[d.Diagnostic]:
    """Walk the map's size through the windows of `plan` (`spatial_plan`); stop at the first map
    that cannot be computed."""
    diags: list[d.Diagnostic] = []
    sizes = tuple(network.input[1:])
    rank = len(sizes)
    chain = [shape_text(sizes)]
    for win in plan:
        if win.kernel is None:
            continue
        k, s, p = (per_axis(v, rank) for v in (win.kernel, win.stride, win.padding))
        if any(x < least for x, least in zip(sizes, win.least)):
            history = " → ".join(chain)
            padded = (f" padded to {shape_text([x + 2 * q for x, q in zip(sizes, p)])}"
                      if any(p) and any(least < kk for least, kk in zip(win.least, k)) else "")
            least = size_text(min_input_size(plan, rank=rank), rank)
            hint = f"use an input of at least {least}, or remove a downsampling step"
            if 1 in sizes:
                diags.append(d.Diagnostic(
                    d.TOO_SMALL, f"{win.node} ({win.label}) would shrink the {shape_text(sizes)} "
                    f"{_NOUNS.get(rank, 'map')} below {size_text(1, rank)}: {history} → nothing",
                    win.span, hint))
            else:
                diags.append(d.Diagnostic(
                    d.KERNEL_TOO_LARGE, f"{win.node} has a {dims_text(win.kernel, rank)} kernel, larger than its "
                    f"{shape_text(sizes)} input{padded}: {history}", win.span, hint))
            return diags
        new = _slid(sizes, win)
        dropped = [axis for axis, x, kk, ss, pp in zip(_AXES.get(rank, ("values",) * rank), sizes, k, s, p)
                   if lowering.drops_input(x, kk, ss, pp, win.ceil)]
        if dropped:
            diags.append(d.Diagnostic(
                d.UNEVEN_SIZE, f"{win.node} ({win.label}) drops the last {' and '.join(dropped)} of "
                f"its {shape_text(sizes)} map ({shape_text(sizes)} → {shape_text(new)})", win.span,
                "choose an input size that divides evenly, or pad"))
        if new != sizes:
            chain.append(f"{shape_text(new)} ({win.node})")
        sizes = new
    return diags


# --- lowering ----------------------------------------------------------------------------------------

def lower(network: Network, *, checked: bool = False,
          lowered: Sequence[lowering.Lowered] | None = None) -> nx.DiGraph:
    """The architecture graph of docs/graph.md as a networkx DiGraph; raises SpecError when
    `check` finds an error. `lower_arch` builds the same graph without importing networkx.

    `checked=True` skips `check` for a caller that has just run it; `lowered` is
    `lowering.lower(network)` when the caller already has it.
    """
    return to_networkx(lower_arch(network, checked=checked, lowered=lowered))


def lower_arch(network: Network, *, checked: bool = False,
               lowered: Sequence[lowering.Lowered] | None = None) -> ArchGraph:
    """The architecture graph of docs/graph.md in densedsl's own `ArchGraph` (what the analysis
    builds and reads: no networkx import); `to_networkx` wraps the same dicts in a DiGraph."""
    if not checked:
        found = check_and_lower(network)
        d.raise_if_errors(found.diagnostics)
        lowered = found.lowered if lowered is None else lowered
    return _Builder(network).build(lowering.lower(network) if lowered is None else lowered)


class _Nodes(Mapping):
    """The part of networkx's `G.nodes` the analysis reads: `nodes[n]` (the node's attribute
    dict itself), iteration and `in` over the ids, and `nodes(data=True)` / `nodes(data="key")`."""

    __slots__ = ("_node",)

    def __init__(self, node: dict[str, dict[str, Any]]):
        self._node = node

    def __getitem__(self, n: str) -> dict[str, Any]:
        return self._node[n]

    def __iter__(self) -> Iterator[str]:
        return iter(self._node)

    def __len__(self) -> int:
        return len(self._node)

    def __contains__(self, n: object) -> bool:
        return n in self._node

    def __call__(self, data: bool | str = False, default: Any = None) -> Iterable:
        if data is False:
            return self
        if data is True:
            return self._node.items()
        return ((n, a.get(data, default)) for n, a in self._node.items())


class ArchGraph:
    """The architecture graph in exactly the dicts a networkx DiGraph keeps: `_node` (id →
    attribute dict), `_succ` and `_pred` (id → {neighbour: edge attribute dict}, one edge dict
    shared by both) and `graph` (graph attributes), with the reading surface of a DiGraph that
    the analysis uses (`nodes`, `succ`, `pred`, `graph`, iteration in node order).

    It exists so that `check`, `summary` and the language server never import networkx (~0.2 s
    of a fresh process); `to_networkx` hands the same dicts to a real DiGraph for diagrams and
    users. `succ` and `pred` are the dicts themselves, not read-only views: do not mutate them.
    """

    __slots__ = ("graph", "_node", "_succ", "_pred", "nodes")

    def __init__(self, **attrs: Any):
        self.graph: dict[str, Any] = dict(attrs)
        self._node: dict[str, dict[str, Any]] = {}
        self._succ: dict[str, dict[str, dict[str, Any]]] = {}
        self._pred: dict[str, dict[str, dict[str, Any]]] = {}
        self.nodes = _Nodes(self._node)

    def __getstate__(self):
        return self.graph, self._node, self._succ, self._pred

    def __setstate__(self, state) -> None:
        self.graph, self._node, self._succ, self._pred = state
        self.nodes = _Nodes(self._node)

    @property
    def succ(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self._succ

    @property
    def pred(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self._pred

    def __iter__(self) -> Iterator[str]:
        return iter(self._node)

    def __len__(self) -> int:
        return len(self._node)

    def __contains__(self, n: object) -> bool:
        return n in self._node


def to_networkx(g: ArchGraph) -> nx.DiGraph:
    """A networkx DiGraph of `g`: the same nodes, edges, attributes and order. When this
    networkx keeps its graph in `_node`/`_succ`/`_pred` (every 2.x and 3.x does; `direct()`)
    it adopts `g`'s dicts, O(1) and shared; otherwise it is built with the public API."""
    import networkx as nx
    if direct():
        wrapped = nx.DiGraph()
        wrapped.graph, wrapped._node, wrapped._succ, wrapped._pred = g.graph, g._node, g._succ, g._pred
        return wrapped
    wrapped = nx.DiGraph()
    wrapped.graph.update(g.graph)
    wrapped.add_nodes_from(g._node.items())
    wrapped.add_edges_from((u, v, data) for u, targets in g._succ.items() for v, data in targets.items())
    return wrapped


def _direct_writes_work() -> bool:
    """Whether this networkx keeps a DiGraph in the dicts `to_networkx` hands it (`_node`,
    `_succ`, `_pred`, as every networkx 2.x and 3.x does). Checked once, by wrapping a two-node
    `ArchGraph` and comparing it with the same graph built by the public API: a networkx that
    changed its internals gets the public API, slower but right."""
    import networkx as nx
    try:
        arch, slow = ArchGraph(name="probe"), nx.DiGraph(name="probe")
        for node, data in (("a", {"k": 1}), ("b", {"k": 2})):
            arch._succ[node], arch._pred[node], arch._node[node] = {}, {}, data
            slow.add_node(node, **data)
        edge = {"kind": "flow"}
        arch._succ["a"]["b"] = arch._pred["b"]["a"] = edge
        slow.add_edge("a", "b", **edge)
        fast = nx.DiGraph()
        fast.graph, fast._node, fast._succ, fast._pred = arch.graph, arch._node, arch._succ, arch._pred
        return (fast._succ is arch._succ and fast._pred is arch._pred and fast._node is arch._node
                and fast.graph == slow.graph
                and list(fast.nodes(data=True)) == list(slow.nodes(data=True))
                and list(fast.edges(data=True)) == list(slow.edges(data=True))
                and list(fast.predecessors("b")) == ["a"] and fast.pred["b"] == slow.pred["b"]
                and fast.number_of_edges() == 1 and nx.is_directed_acyclic_graph(fast))
    except Exception:  # noqa: BLE001 -- any surprise in a private layout means: use the public API
        return False


_DIRECT: bool | None = None  # `_direct_writes_work()`, probed when networkx is first needed


def direct() -> bool:
    """Whether networkx graphs can share an `ArchGraph`'s dicts (probed once, on first need)."""
    global _DIRECT
    if _DIRECT is None:
        _DIRECT = _direct_writes_work()
    return _DIRECT


def predecessors(g: ArchGraph | nx.DiGraph):
    """Each node's {predecessor: edge data}: the dict itself for an `ArchGraph`, and networkx's
    own dict for a DiGraph when `direct()` (its read-only views cost a Python call per item, and
    the analysis reads every dense edge)."""
    if type(g) is ArchGraph or direct():
        return g._pred
    return g.pred


class _Builder:
    """Writes the graph into an `ArchGraph`'s dicts, as networkx's `add_node`/`add_edge` would
    store it (a DenseNet-264 has 1,071 nodes; networkx's per-item checks were most of the time)."""

    def __init__(self, network: Network):
        self.network = network
        self.g = ArchGraph(name=network.name, input_shape=tuple(network.input))

    def node(self, node_id: str, kind: str, stage: str, span: Span | None, in_shape, out_shape,
             params: int = 0, buffers: int = 0, macs: int = 0, module: str | None = None,
             attrs: Iterable = (), **extra) -> str:
        data = {"kind": kind, "stage": stage, "span": span, "in_shape": tuple(in_shape),
                "out_shape": tuple(out_shape), "params": params, "buffers": buffers, "macs": macs,
                "flops": 2 * macs}
        data.update(attrs)
        if module is not None:
            data["module"] = module
        data.update(extra)
        # ids are unique by construction: a repeat would be a builder bug
        g = self.g
        if node_id in g._node:
            raise AssertionError(f"graph node {node_id} added twice")
        g._succ[node_id], g._pred[node_id], g._node[node_id] = {}, {}, data
        return node_id

    def edge(self, u: str, v: str, kind: str = "flow") -> None:
        """An edge between two nodes already added (as `_bulk_edges` writes it)."""
        data = {"kind": kind, "shape": self.g._node[u]["out_shape"]}
        self.g._succ[u][v] = data
        self.g._pred[v][u] = data

    def ops(self, prefix: str, stage: str, ops: Iterable[lowering.Op], prev: str, span: Span | None,
            spans: Sequence[Span | None] | None = None, **extra) -> str:
        for i, op in enumerate(ops):
            node = self.node(f"{prefix}.{op.name}", op.kind, stage,
                             (spans[i] if spans is not None else None) or span, op.in_shape,
                             op.out_shape, op.params, op.buffers, op.macs, op.module, op.attrs, **extra)
            self.edge(prev, node)
            prev = node
        return prev

    def build(self, lowered: Sequence[lowering.Lowered]) -> ArchGraph:
        net = self.network
        shape = tuple(net.input)
        prev = self.node("input", "input", "stem", net.input_span, shape, shape)
        for stage in lowered:
            match stage:
                case lowering.LoweredStem():
                    prev = self.ops("stem", "stem", stage.ops, prev, net.stem.span, stage.spans)
                case lowering.LoweredBlock():
                    prev = self.block(stage, prev)
                case lowering.LoweredTransition():
                    t = stage.source
                    # only a transition with a pool has an op named pool
                    spans = [cast(n.Pool, t.pool).span if op.name == "pool" else None for op in stage.ops]
                    prev = self.ops(stage.name, stage.name, stage.ops, prev, t.span, spans)
                case lowering.LoweredHead():
                    prev = self.ops("head", "head", stage.ops, prev, stage.source.span)
                case _:
                    assert_never(stage)
        shape = self.g.nodes[prev]["out_shape"]
        out_stage = "head" if net.head is not None else self.g.nodes[prev]["stage"]
        self.node("output", "output", out_stage, net.head.span if net.head else None, shape, shape)
        self.edge(prev, "output")
        self.g.graph["output_shape"] = tuple(shape)
        return self.g

    def block(self, lowered: lowering.LoweredBlock, prev: str) -> str:
        block, name, shape = lowered.source, lowered.name, lowered.in_shape
        x = self.node(f"{name}.x0", "feature", name, block.span, shape, shape, block=block.index,
                      layer=0)
        self.edge(prev, x)
        # (feature map, its shape): the dense edges go in bulk, each shape looked up once; a
        # concatenation's predecessors are kept in its reads' order, the order it concatenates
        table = lowered.table
        features = [(x, self.g.nodes[x]["out_shape"])]
        for layer, ops in enumerate(lowered.layers, start=1):
            lname = f"{name}.denselayer{layer}"
            cin = ops[0].in_shape
            reads = features if table.prefix else [features[i] for i in table.reads_of(layer)]
            concat = self.node(f"{lname}.concat", "concat", name, block.span, cin, cin,
                               block=block.index, layer=layer, maps=len(reads))
            self._bulk_edges(reads, concat, "dense")
            last = self.ops(lname, name, ops, concat, block.span, block=block.index, layer=layer)
            new = ops[-1].out_shape
            x = self.node(f"{name}.x{layer}", "feature", name, block.span, new, new,
                          block=block.index, layer=layer)
            self.edge(last, x)
            features.append((x, self.g.nodes[x]["out_shape"]))
        emitted = features if table.dense else [features[i] for i in table.emits]
        out = self.node(f"{name}.out", "concat", name, block.span, lowered.out_shape,
                        lowered.out_shape, block=block.index, maps=len(emitted))
        self._bulk_edges(emitted, out, "concat")
        return out

    def _bulk_edges(self, features: list[tuple[str, tuple[int, ...]]], target: str, kind: str) -> None:
        """Edges from every (feature map, shape) to `target`, both nodes already in the graph:
        what networkx's `add_edges_from` stores (one attribute dict per edge, shared by the
        successor and the predecessor maps), without its per-edge checks (a block of L layers
        has L(L+1)/2 dense edges)."""
        succ, pred = self.g._succ, self.g._pred[target]
        for f, shape in features:
            data = {"kind": kind, "shape": shape}
            succ[f][target] = data
            pred[f] = data
