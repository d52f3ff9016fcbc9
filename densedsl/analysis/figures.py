"""Static analysis: every figure densedsl reports, read off the architecture graph.

    a = analyze(network)                 # raises SpecError on any error; warnings on a.diagnostics
    a.params, a.macs, a.flops, a.depth, a.connections, a.memory(batch=64, mode="efficient")

Order of work, cheapest first, so that absurd specs are refused before anything big is built:
1. `graph.check_and_lower`: the network's one lowering, and on it channels (E201), map sizes
   (E202, E203, W204) and graph size (E304), before any graph exists;
2. the parameter prediction of `lowering.predict` against the hard ceiling (E304) and
   `max_params` (E301);
3. `graph.lower_arch` from that lowering, then every figure from the graph, the invariants (E205), batch-of-one
   training (W206), memory against `max_memory` (E302) and the spec's `expect` lines (E303).
docs/analysis.md documents every attribute and the memory model.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal, assert_never, cast

from ..core import diagnostics as d
from ..core.source import Span
from ..core.units import binary, exact_text, index_list, shape_text, si
from ..ir import connectivity, lowering
from ..ir.ops import kind_of, numel
from ..language.network import DenseBlock, Network, Transition, per_axis
from . import graph as graph_
from . import memory as memory_

if TYPE_CHECKING:  # networkx is imported only when someone asks for `Analysis.graph`
    import networkx as nx

Graph = graph_.ArchGraph  # what the walks below read: an ArchGraph, or a networkx DiGraph (tests)

_KIND = operator.itemgetter("kind")  # an edge's kind, read in C over a concat's L inputs
MemoryMode = Literal["standard", "efficient", "inference"]
MEMORY_MODES: tuple[MemoryMode, ...] = ("standard", "efficient", "inference")

# Defaults for the resource guards, sized for one large accelerator (an 80 GiB GPU): a network
# past them could not be trained on one anyway. Pass a larger limit (or math.inf) to lift them.
DEFAULT_MAX_PARAMS = 10**10
DEFAULT_MAX_MEMORY = 80 * 2**30   # activation bytes of a training step, batch 1, float32
# Never lifted: 10^12 float32 parameters are 4 TB, beyond any device.
HARD_MAX_PARAMS = 10**12


# --- formatting shared by analysis and report --------------------------------------------------



# --- result types ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MinInputSize:
    """The smallest square input (pixels per side) the network accepts.

    `eval`: every map stays at least 1x1 (torchvision's `min_size`, 29 for DenseNet-121).
    `train`: additionally every batch norm sees more than one value per channel with a batch of
    one, so training with batch 1 works.
    """

    eval: int
    train: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StageFigures:
    name: str                       # stem, denseblock{i}, transition{j}, head
    kind: str                       # "stem", "dense", "transition", "head"
    span: Span | None = field(compare=False, repr=False)
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: int
    buffers: int
    macs: int
    flops: int
    depth: int                      # conv and linear layers in the stage


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockFigures(StageFigures):
    index: int
    layers: int
    growth: int
    bottleneck: int | None
    in_channels: int
    out_channels: int
    connections: int                # dense edges into this block's layers, counted on the graph


@dataclass(frozen=True, slots=True)
class FeatureInfo:
    """One feature map as timm's `feature_info` states it for `features_only=True`: the stem's tap
    (before its pool, as timm's) first when the stem has one, then each dense block's output."""

    name: str                       # stem, denseblock{i}
    module: str                     # the module whose output it is: features.relu0, features.denseblock{i}
    channels: int
    reduction: int                  # cumulative stride relative to the input
    shape: tuple[int, ...]          # at the analysed input size


@dataclass(frozen=True, slots=True, kw_only=True)
class Analysis:
    """Every figure of one network. Whether training classifies or regresses is the head's:
    `analysis.network.head.task` (`network.task`, None without a head): "regression" for
    `head classes=1` or `task=regression`, else "classification"."""

    network: Network = field(repr=False)
    arch: graph_.ArchGraph = field(repr=False, compare=False)  # the graph, without networkx
    params: int
    buffers: int
    macs: int
    flops: int
    depth: int
    connections: int
    channels: int                   # channels of the final feature map (entering the head)
    # HarDNet's CIO (Chao et al. 2019): every conv's input plus output elements, one sample;
    # a proxy for memory traffic. Not an `expect` figure (`figures()`): a report figure.
    cio: int
    state_dict_entries: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    min_input_size: MinInputSize
    receptive_field: int
    stages: tuple[StageFigures, ...]
    lowered: tuple[lowering.Lowered, ...] = field(repr=False, compare=False)
    feature_info: tuple[FeatureInfo, ...]
    diagnostics: tuple[d.Diagnostic, ...] = ()
    _memory: dict[str, memory_.MemoryModel] = field(repr=False, compare=False, default_factory=dict)
    _networkx: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def graph(self) -> nx.DiGraph:
        """The architecture graph (docs/graph.md) as a networkx DiGraph, made on first use: it
        wraps `arch`'s own dicts (the same nodes, edges, attributes and order), so networkx is
        imported only by the commands that walk the graph with it (diagrams, users), never by
        `check`, `summary` or the language server."""
        if self._networkx is None:
            object.__setattr__(self, "_networkx", graph_.to_networkx(self.arch))
        return self._networkx

    @property
    def name(self) -> str:
        return self.network.name

    @property
    def blocks(self) -> tuple[BlockFigures, ...]:
        return tuple(s for s in self.stages if isinstance(s, BlockFigures))

    def stage(self, name: str) -> StageFigures:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def memory(self, batch: int = 1, dtype: str = "float32", mode: MemoryMode = "standard", *,
               weights: bool = False) -> int:
        """Predicted activation bytes of one step; docs/analysis.md states what is counted.

        "standard": tensors autograd keeps for backward in a straightforward (torchvision-style)
        implementation, quadratic in block depth. "efficient": each dense layer, the stem and each
        transition keep only their inputs and conv outputs; concatenation, BN, ReLU, pooling and
        dropout are recomputed in backward (Pleiss et al.), linear in depth.
        "inference": the peak of live tensors in a forward pass without autograd.
        `weights=True` adds the parameters and buffers, and for training their gradients.
        """
        if mode not in MEMORY_MODES:
            raise ValueError(f"unknown memory mode {mode!r}; use one of {', '.join(MEMORY_MODES)}")
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        total = self.memory_model(mode).bytes(batch, dtype)
        if weights:
            size = lowering.dtype_bytes(dtype)
            total += (self.params + self.buffers) * size
            if mode != "inference":
                total += self.params * size
        return total

    def memory_model(self, mode: MemoryMode = "standard") -> memory_.MemoryModel:
        """The per-sample model behind `memory` (`analysis/memory.py`): what is kept for backward
        and what backward adds at its peak, separately."""
        model = self._memory.get(mode)
        if model is None:  # made on first use: `check` and the language server never ask for most
            shared = frozenset(s.name for s in self.lowered if isinstance(s, lowering.LoweredBlock) and s.shared)
            model = self._memory[mode] = memory_.model(self.arch, mode, shared)
        return model

    def figures(self) -> dict[str, int]:
        """The figures an `expect` line (and `diff`, `sweep`) can name."""
        return {"params": self.params, "buffers": self.buffers, "macs": self.macs,
                "flops": self.flops, "channels": self.channels, "connections": self.connections,
                "depth": self.depth}

    def check_line(self) -> str:
        """`densenet121: 7,978,856 params · 5.67 GFLOPs · depth 121 · 535 connections · …`."""
        return (f"{self.name}: {self.params:,} params · {si(self.flops, 'FLOPs')} · "
                f"depth {self.depth} · {self.connections:,} connections · "
                f"{shape_text(self.input_shape)} → {shape_text(self.output_shape)}")


# --- analyze -----------------------------------------------------------------------------------

def analyze(network: Network, *, max_params: int | float | None = None,
            max_memory: int | float | None = None) -> Analysis:
    """Check the network and compute every figure; raises SpecError when anything is an error.

    `max_params` (default 10^10) and `max_memory` (default 80 GiB of training activations at
    batch 1, float32, standard mode) guard resources; math.inf lifts them.
    """
    max_params = DEFAULT_MAX_PARAMS if max_params is None else max_params
    max_memory = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
    checked = graph_.check_and_lower(network)  # the one lowering, read by everything below
    diags = checked.diagnostics
    if not d.has_errors(diags):
        assert checked.prediction is not None  # check_and_lower: complete whenever there is no error
        diags += _refuse_unbuildable(network, checked.prediction)
    d.raise_if_errors(diags)

    assert checked.lowered is not None  # None only with E210, an error
    lowered, plan = checked.lowered, checked.plan
    g = graph_.lower_arch(network, checked=True, lowered=lowered)
    nodes = g.nodes
    params = buffers = macs = flops = depth = cio = 0
    for _, a in nodes(data=True):  # one pass over the graph for every total
        params += a["params"]
        buffers += a["buffers"]
        macs += a["macs"]
        flops += a["flops"]
        if kind_of(a["kind"]).layer:
            depth += 1
        if a["kind"] == "conv":
            cio += numel(a["in_shape"]) + numel(a["out_shape"])
    stages = _stages(lowered, g)
    diags += _check_invariants(network, g, stages, lowered)
    if not d.has_errors(diags):
        diags += _check_batch_of_one(network, g, plan)

    rank = len(network.input) - 1
    rf, jumps = _receptive_fields(g)
    final = _final_map(g)
    head_in = nodes[final]["out_shape"]
    analysis = Analysis(
        network=network, arch=g, params=params, buffers=buffers, macs=macs, flops=flops, depth=depth,
        connections=sum(s.connections for s in stages if isinstance(s, BlockFigures)),  # dense edges all end in a block
        channels=head_in[0], cio=cio,
        state_dict_entries=_state_dict_entries(g),
        input_shape=tuple(network.input), output_shape=tuple(g.graph["output_shape"]),
        min_input_size=MinInputSize(graph_.min_input_size(plan, rank=rank),
                                    graph_.min_input_size(plan, train=True, rank=rank)),
        receptive_field=rf[final],
        stages=stages,
        lowered=lowered,
        # lower() puts the stem first
        feature_info=_stem_tap(cast(lowering.LoweredStem, lowered[0]), g, jumps) + tuple(
            FeatureInfo(s.name, f"features.{s.name}", s.out_channels, jumps[f"{s.name}.out"],
                        tuple(s.out_shape))
            for s in stages if isinstance(s, BlockFigures)),
        _memory={},  # each mode's model on first use (`Analysis.memory`)
    )
    if not d.has_errors(diags):
        diags += _check_resources(analysis, max_params, max_memory)
        diags += _check_expectations(analysis)
    d.raise_if_errors(diags)
    return dataclasses.replace(analysis, diagnostics=tuple(d.sort_diagnostics(diags)))


def _stem_tap(stem: lowering.LoweredStem, g: Graph, jumps: dict[str, int]) -> tuple[FeatureInfo, ...]:
    """The stem's feature map (timm's first `feature_info` entry), when the stem has a tap."""
    if stem.tap is None:
        return ()
    op = stem.ops[stem.tap]
    shape = tuple(g.nodes[f"stem.{op.name}"]["out_shape"])
    return (FeatureInfo("stem", f"features.{op.name}", shape[0], jumps[f"stem.{op.name}"], shape),)


# --- checks ------------------------------------------------------------------------------------

def _refuse_unbuildable(network: Network, prediction: lowering.Prediction) -> list[d.Diagnostic]:
    """Refuse, from the closed-form count and before any graph exists, a network too large to
    analyse at all (the count is read off the network's one lowering, at the input's size).
    Every figure densedsl reports, E301's included, is read off the graph afterwards.
    `prediction` is `lowering.predict(network)`, as `graph.check_and_lower` made it."""
    predicted = prediction.params
    if predicted >= HARD_MAX_PARAMS:
        return [d.Diagnostic(d.TOO_LARGE, f"the network would have {predicted:,} parameters "
                             f"({si(predicted)}), more than densedsl analyses ({si(HARD_MAX_PARAMS)})",
                             network.span, "use fewer layers or a smaller growth rate")]
    return []


def _too_many_params(network: Network, params: int, limit: int | float) -> d.Diagnostic:
    return d.Diagnostic(d.TOO_MANY_PARAMS, f"the network has {params:,} parameters ({si(params)}), "
                        f"more than the limit of {_limit(limit)}", network.span,
                        "reduce layers or growth, or raise the limit with --max-params")


def _limit(value: int | float) -> str:
    return f"{int(value):,} ({si(int(value))})" if value != float("inf") else "infinity"


def _check_resources(a: Analysis, max_params: int | float, max_memory: int | float) -> list[d.Diagnostic]:
    diags = []
    if a.params > max_params:
        diags.append(_too_many_params(a.network, a.params, max_params))
    mem = a.memory(1, "float32", "standard")
    if mem > max_memory:
        worst = max(a.blocks, key=lambda b: numel(b.out_shape) * b.layers,
                    default=None)
        where = f"; the largest block is {worst.name} ({worst.layers} layers at {shape_text(worst.out_shape)})" \
            if worst is not None else ""
        diags.append(d.Diagnostic(
            d.TOO_MUCH_MEMORY, f"a training step at batch 1 (float32) keeps {binary(mem)} of "
            f"activations ({mem:,} bytes), more than the limit of {binary(max_memory)}{where}",
            a.network.span, "use a smaller input, fewer layers, or raise the limit with --max-memory"))
    return diags


def _check_expectations(a: Analysis) -> list[d.Diagnostic]:
    figures = a.figures()
    diags = []
    for e in a.network.expectations:
        got = figures[e.key]
        if abs(Fraction(got) - e.value) > e.tolerance:
            lo, hi = e.value - e.tolerance, e.value + e.tolerance
            allowed = f"exactly {exact_text(e.value)}" if e.tolerance == 0 else \
                f"{exact_text(lo)} to {exact_text(hi)}"
            diags.append(d.Diagnostic(
                d.EXPECTATION, f"expected {e.key} {e.text} ({allowed}), the analysis gives "
                f"{got:,} = {_derivation(a, e.key)}",
                e.span, f"update the expectation to {e.key}={got} or fix the network"))
    return diags


def _derivation(a: Analysis, key: str) -> str:
    """How a figure adds up, from the per-stage figures: the message's "why"."""
    if key == "connections":
        return " + ".join(f"{b.connections:,} ({b.name})" for b in a.blocks) or "0 (no dense block)"
    if key == "channels":
        last = next((s for s in reversed(a.stages) if s.kind in ("dense", "transition")), None)
        if last is None:
            return "the stem's output channels"
        lowered = next(s for s in a.lowered if s.name == last.name)
        source = lowered.source
        match source:
            case DenseBlock():
                assert isinstance(lowered, lowering.LoweredBlock)
                return _block_channels(last.name, last.in_shape[0], source, lowered.table)
            case Transition():
                if source.channels is not None:
                    return f"channels={source.channels} of {last.name}"
                assert source.compression is not None  # a transition sets channels or compression
                return f"⌊{float(source.compression):g}·{last.in_shape[0]:,}⌋ from {last.name}"
            case _:
                raise AssertionError(f"{last.name} is neither a block nor a transition")
    if key == "depth":
        return " + ".join(f"{s.depth} ({s.name})" for s in a.stages if s.depth) + \
            " conv and linear layers"
    return " + ".join(f"{getattr(s, key):,} ({s.name})" for s in a.stages if getattr(s, key))


def _block_channels(name: str, k0: int, block: DenseBlock, table: connectivity.Table) -> str:
    """A block's output channels as its table adds them up: each emitted map's channels (the
    input's k0, a layer's width), equal widths counted together: `512 + 16·32` for DenseNet's
    table, `2·160 + 1·462` for a HarDNet block emitting x1, x3, x4."""
    counts: dict[int, int] = {}
    for i in table.emits:
        if i:
            counts[table.widths[i - 1]] = counts.get(table.widths[i - 1], 0) + 1
    terms = ([f"{k0:,}"] if 0 in table.emits else []) + [f"{c}·{w:,}" for w, c in counts.items()]
    total = " + ".join(terms) or "0"
    if table.dense and table.widths == (block.growth,) * block.layers:
        return f"{total} ({name}: {k0:,} in, {block.layers} layers of growth {block.growth})"
    widths = (f"each layer adds {block.growth}" if table.widths == (block.growth,) * block.layers
              else f"widths {index_list(table.widths, noun='layers')}")
    return f"{total} ({name}: {k0:,} in, emits {index_list(table.emits, 'x', 'maps')}; {widths})"


def _check_invariants(network: Network, g: Graph, stages, lowered=()) -> list[d.Diagnostic]:
    """Dense connectivity as the paper states it, verified on the graph (E205 means a bug);
    `lowered` is the lowering the graph was built from (a block not in it is lowered here)."""
    problems: list[tuple[Span | None, str]] = []
    made = {b.source.index: b for b in lowered if isinstance(b, lowering.LoweredBlock)}
    if not _forward(g) and not _acyclic(g):
        problems.append((network.span, "the graph has a cycle"))
    pred, nodes = graph_.predecessors(g), g.nodes
    for block in network.blocks:
        problems += [(block.span, m) for m in _block_invariants(block, g, pred, nodes)]
    # The closed-form totals the guards trust must agree with the graph they guard.
    for s in stages:
        if isinstance(s, BlockFigures):
            block = next(b for b in network.blocks if b.index == s.index)
            t = lowering.block_totals(made.get(s.index) or lowering.lower_block(block, s.in_shape))
            if (t.params, t.buffers, t.macs) != (s.params, s.buffers, s.macs):
                problems.append((block.span, f"{s.name}: graph totals {s.params}/{s.buffers}/{s.macs} "
                                 f"differ from the closed form {t.params}/{t.buffers}/{t.macs}"))
    return [d.Diagnostic(d.INVARIANT, msg, span, "this is a bug in densedsl; please report it")
            for span, msg in problems]


def _block_invariants(block: DenseBlock, g: Graph, pred, nodes) -> list[str]:
    """The block's graph against its connectivity table: every concatenation gathers exactly the
    maps the table says, in its order, over dense edges, with the channels they add up to; the
    block emits exactly the maps of its emit list."""
    problems: list[str] = []
    name, table = f"denseblock{block.index}", connectivity.table(block)
    k0 = nodes[f"{name}.x0"]["out_shape"][0]
    edges = 0
    # DenseNet's x0..x(l-1), grown by one map per layer: each layer's check is then C-level set
    # work rather than Python per edge (L(L+1)/2 edges a block)
    expected: set[str] = set()
    for layer in range(1, block.layers + 1):
        concat = f"{name}.denselayer{layer}.concat"
        inputs = pred[concat]
        reads = table.reads_of(layer)
        if table.prefix:
            expected.add(f"{name}.x{layer - 1}")
            exact = inputs.keys() == expected
        else:
            exact = list(inputs) == [f"{name}.x{i}" for i in reads]
        if not exact or set(map(_KIND, inputs.values())) != {"dense"}:
            problems.append(f"{concat} gathers {len(inputs)} maps, expected the {len(reads)} maps "
                            f"{_maps(reads)} over dense edges")
        want = table.in_channels(k0, layer)
        gathered = want if exact else sum(nodes[u]["out_shape"][0] for u in inputs)
        if gathered != nodes[concat]["out_shape"][0] or gathered != want:
            problems.append(f"{concat} has {nodes[concat]['out_shape'][0]} channels from inputs of "
                            f"{gathered}, expected {want} ({_maps(reads)})")
        edges += len(inputs)
    if edges != table.connections:
        problems.append(f"{name} has {edges} dense connections, expected {table.connections}")
    emitted = list(pred[f"{name}.out"])
    if emitted != [f"{name}.x{i}" for i in table.emits]:
        problems.append(f"{name} emits {len(emitted)} maps, expected {_maps(table.emits)}")
    out = nodes[f"{name}.out"]["out_shape"][0]
    if out != table.out_channels(k0):
        problems.append(f"{name} emits {out} channels, expected {table.out_channels(k0)} ({_maps(table.emits)})")
    return problems


def _maps(outputs: tuple[int, ...]) -> str:
    """`x0..x5` for a run, else `x7, x6, x4, x0` (in the order given)."""
    if len(outputs) > 2 and outputs == tuple(range(outputs[0], outputs[-1] + 1)):
        return f"x{outputs[0]}..x{outputs[-1]}"
    return ", ".join(f"x{i}" for i in outputs)


def _acyclic(g: Graph) -> bool:
    """networkx's exact test, for a graph whose node order does not prove it (`_forward`): only
    a damaged graph gets here, so only then is networkx imported."""
    import networkx as nx
    return nx.is_directed_acyclic_graph(graph_.to_networkx(g) if isinstance(g, graph_.ArchGraph) else g)


def _forward(g: Graph) -> bool:
    """Every edge runs from an earlier node to a later one (which proves the graph acyclic): the
    builder adds nodes in execution order, so this linear pass spares a topological sort."""
    order = {n: i for i, n in enumerate(g)}
    position = order.__getitem__
    return all(max(map(position, preds), default=-1) < order[v] for v, preds in graph_.predecessors(g).items())


def _check_batch_of_one(network: Network, g: Graph, plan: tuple[graph_.Window, ...]) -> list[d.Diagnostic]:
    """BN in training needs more than one value per channel: with batch 1, a 1x1 map fails (and
    a group norm with one channel per group, instance norm, fails in eval too)."""
    stages: list[str] = []
    norms: dict[str, str] = {}  # the norms that refuse, by name, and when: train or always
    for _, a in g.nodes(data=True):
        fails = kind_of(a["kind"]).one_value_fails(a)
        if fails and numel(a["in_shape"][1:]) <= 1:
            norms.setdefault(kind_of(a["kind"]).words(a)[0], fails)
            if a["stage"] not in stages:
                stages.append(a["stage"])
    if not stages:
        return []
    always = [w for w, when in norms.items() if when == "always"]
    also = f" ({' and '.join(always)} refuses it in eval too)" if always else ""
    rank = len(network.input) - 1
    which = ", ".join(stages)
    if rank == 0:  # a feature vector: no input size helps, each feature is one value per sample
        return [d.Diagnostic(
            d.TRAIN_TOO_SMALL, f"a batch of one cannot be trained: {' and '.join(norms)} in {which} "
            f"normalises each feature over the batch, and a batch of one holds one value per feature{also}",
            network.input_span or network.span,
            "train with batches of 2 or more; in dense blocks, norm=layer or norm=none needs no batch "
            "statistics (a transition's norm and the stem's `norm` are batch norms)")]
    least = graph_.min_input_size(plan, train=True, rank=rank)
    return [d.Diagnostic(
        d.TRAIN_TOO_SMALL, f"a batch of one cannot be trained at {shape_text(network.input)}: "
        f"{' and '.join(norms)} in {which} sees a {graph_.size_text(1, rank)} map, one value per "
        f"channel{also}",
        network.input_span or network.span,
        f"train with batches of 2 or more, or use an input of at least {graph_.size_text(least, rank)}")]


# --- figures off the graph ---------------------------------------------------------------------

def _stages(lowered: tuple[lowering.Lowered, ...], g: Graph) -> tuple[StageFigures, ...]:
    groups: dict[str, list[str]] = {}
    for n, stage in g.nodes(data="stage"):
        if n in ("input", "output"):
            continue
        groups.setdefault(stage, []).append(n)
    result: list[StageFigures] = []
    for stage in lowered:
        members = groups.get(stage.name)
        if not members:
            continue  # a stem without ops
        attrs = [g.nodes[n] for n in members]
        common = dict(
            name=stage.name, span=stage.source.span, in_shape=attrs[0]["in_shape"],
            out_shape=attrs[-1]["out_shape"],
            params=sum(a["params"] for a in attrs), buffers=sum(a["buffers"] for a in attrs),
            macs=sum(a["macs"] for a in attrs), flops=sum(a["flops"] for a in attrs),
            depth=sum(1 for a in attrs if kind_of(a["kind"]).layer))
        match stage:
            case lowering.LoweredStem():
                result.append(StageFigures(kind="stem", **common))
            case lowering.LoweredTransition():
                result.append(StageFigures(kind="transition", **common))
            case lowering.LoweredHead():
                result.append(StageFigures(kind="head", **common))
            case lowering.LoweredBlock():
                block = stage.source
                pred = graph_.predecessors(g)
                connections = sum(list(map(_KIND, pred[n].values())).count("dense")
                                  for n in members if n.endswith(".concat"))
                result.append(BlockFigures(
                    kind="dense", index=block.index, layers=block.layers, growth=block.growth,
                    bottleneck=block.bottleneck, in_channels=attrs[0]["out_shape"][0],
                    out_channels=attrs[-1]["out_shape"][0], connections=connections, **common))
            case _:
                assert_never(stage)
    return tuple(result)


def _final_map(g: Graph) -> str:
    """The node whose output enters the head (or the network's output when there is none)."""
    for n, a in g.nodes(data=True):
        if a["stage"] == "head" and n != "output":
            return next(iter(g.pred[n]))
    return next(iter(g.pred["output"]))


def _receptive_fields(g: Graph) -> tuple[dict[str, int], dict[str, int]]:
    """Receptive field and cumulative stride of every node, along the deepest path.

    r_out = r_in + (k − 1)·j_in and j_out = j_in·s for ops that slide a window (convs and
    pools); a concat takes the largest field among its inputs (they share one stride). Each axis
    has its own field and stride (`kernel=1x7`); the figures are the largest over the axes, which
    for square windows is every axis' own.
    """
    rf: dict[str, tuple[int, ...]] = {}
    jump: dict[str, tuple[int, ...]] = {}
    r_axes = max(len(g.graph.get("input_shape", (0, 0))) - 1, 1)
    ones = (1,) * r_axes
    pred = graph_.predecessors(g)
    for n, a in g.nodes(data=True):
        preds = pred[n]
        if not preds:
            rf[n] = jump[n] = ones
            continue
        first = next(iter(preds))
        r = rf[first] if len(preds) == 1 else tuple(map(max, zip(*map(rf.__getitem__, preds))))
        j = jump[first]
        window = kind_of(a["kind"]).window(a)
        if window is not None and (window[0] != 1 or window[1] != 1):  # a 1x1 window, stride 1, changes neither
            kernel, stride, _ = (per_axis(v, r_axes) for v in window)
            r = tuple(x + (k - 1) * step for x, k, step in zip(r, kernel, j))
            j = tuple(step * s for step, s in zip(j, stride))
        rf[n], jump[n] = r, j
    return dict(zip(rf, map(max, rf.values()))), dict(zip(jump, map(max, jump.values())))


def _state_dict_entries(g: Graph) -> int:
    """Tensors in the compiled model's state_dict, as the op table counts them per op."""
    return sum(kind_of(a["kind"]).state_entries(a) for _, a in g.nodes(data=True))
