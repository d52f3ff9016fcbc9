"""Hypothesis strategies for densedsl, public so users can property-test their own tools.
Needs hypothesis (`pip install "densedsl[test]"`); without it, importing this module raises an
ImportError saying so.

    from hypothesis import given
    from densedsl.testing import networks, spec_texts, assert_dense_invariants

    @given(networks(max_blocks=2, bottleneck=True))
    def test_mine(network): ...

`networks()` draws valid `Network`s (analyse without errors; warnings such as W204 may occur),
`spec_texts()` the same networks written as spec text and `family_texts()` a network with its
family form (`densedsl.testing.printer` writes both). Knobs are keyword-only; related draws sit
next to each other and the simplest choice comes first, so failures shrink to small networks.
`spec_text`, `family_text` and `assert_dense_invariants` are importable from here too, as before.
"""

from __future__ import annotations

import math
import typing
from dataclasses import replace
from fractions import Fraction

try:
    from hypothesis import strategies as st
except ModuleNotFoundError as e:
    if e.name != "hypothesis":
        raise
    raise ModuleNotFoundError(
        "densedsl.testing.strategies needs the optional package hypothesis, which is not installed: "
        'pip install "densedsl[test]" (or pip install hypothesis)', name="hypothesis") from None

from ..analysis import graph as graph_
from ..ir import connectivity, lowering
from ..language.network import (
    ActivationFn,
    Conv,
    DenseBlock,
    Dropout,
    Head,
    Linear,
    Network,
    Norm,
    Pool,
    RandomLinks,
    ReLU,
    Stem,
    Task,
    Transition,
)
from .invariants import assert_dense_invariants
from .printer import family_text, spec_text

# Finite decimals, so the text form is exact; ≥ 1/2 keeps ⌊θ·m⌋ ≥ 1 for any block output m ≥ 2.
_COMPRESSIONS = (Fraction(1, 2), Fraction(1), Fraction(3, 4))
_RATES = (0.0, 0.2, 0.5)
_ACTIVATIONS = typing.get_args(ActivationFn)  # relu first: failures shrink to the paper's
_VECTOR_NORMS = ("batch", "layer", "none")      # what an MLP's dense layers take
_MAP_NORMS = ("batch", "group", "instance", "layer", "none")  # a conv layer's; batch first (the paper's)


def _axes(draw, choices: tuple[int, ...], rank: int, per_axis: bool):
    """One number for every axis, or (sometimes, rank ≥ 2, `per_axis`) one per axis: `1x7`;
    equal numbers collapse, as the resolver does."""
    if per_axis and rank >= 2 and draw(st.booleans()):
        values = tuple(draw(st.sampled_from(choices)) for _ in range(rank))
        return values if len(set(values)) > 1 else values[0]
    return draw(st.sampled_from(choices))


@st.composite
def _paddings(draw, kernel, rank: int):
    """A padding of at most kernel//2 along each axis (PyTorch's pooling bound)."""
    if isinstance(kernel, tuple):
        values = tuple(draw(st.integers(0, k // 2)) for k in kernel)
        return values if len(set(values)) > 1 else values[0]
    return draw(st.integers(0, kernel // 2))


@st.composite
def _stem(draw, rank: int = 2, per_axis: bool = False) -> Stem:
    if not draw(st.booleans()):
        return Stem()
    ops: list = []
    # A stem may open on the raw input with ops that keep its channels (a norm, a ReLU, a pool, a
    # dropout): where a model could write into the caller's tensor, if any op wrongly did.
    for lead in draw(st.lists(st.sampled_from(("norm", "relu", "dropout", "pool")), max_size=3)):
        ops.append(Norm() if lead == "norm" else ReLU() if lead == "relu"
                   else Dropout(rate=draw(st.sampled_from(_RATES[1:]))) if lead == "dropout"
                   else draw(_stem_pool(rank, per_axis)))
    if not ops or draw(st.booleans()):
        kernel = _axes(draw, (3, 1, 5, 7), rank, per_axis)
        ops.append(Conv(out_channels=draw(st.integers(1, 32)), kernel=kernel,
                        stride=_axes(draw, (1, 2), rank, per_axis), padding=draw(_paddings(kernel, rank)),
                        bias=draw(st.booleans())))
    if draw(st.booleans()):
        ops += [Norm(), ReLU()]
    if draw(st.booleans()):
        ops.append(draw(_stem_pool(rank, per_axis)))
    if draw(st.booleans()):
        ops.append(Dropout(rate=draw(st.sampled_from(_RATES[1:]))))
    return Stem(ops=tuple(ops))


@st.composite
def _stem_pool(draw, rank: int, per_axis: bool) -> Pool:
    k = _axes(draw, (2, 3), rank, per_axis)
    return Pool(mode=draw(st.sampled_from(("max", "avg"))), kernel=k,
                stride=_axes(draw, (1, 2), rank, per_axis), padding=draw(_paddings(k, rank)),
                ceil=draw(st.booleans()))  # ceil_mode: VoVNet's pools


@st.composite
def _group_stem_conv(draw, stem: Stem, channels: int) -> Stem:
    """The stem's conv (it reads the input: the ops before it keep the channels) with groups
    dividing its input and output channels; groups equal to both make it depthwise (HarDNet-DS)."""
    at = next((i for i, op in enumerate(stem.ops) if isinstance(op, Conv)), None)
    if at is None:
        return stem
    conv = stem.ops[at]
    assert isinstance(conv, Conv)
    common = math.gcd(channels, conv.out_channels)
    groups = draw(st.sampled_from([g for g in range(1, common + 1) if common % g == 0]))
    return replace(stem, ops=stem.ops[:at] + (replace(conv, groups=groups),) + stem.ops[at + 1:])


@st.composite
def _vector_stem(draw) -> Stem:
    """An MLP's stem: linear (norm relu) (dropout), or nothing."""
    if not draw(st.booleans()):
        return Stem()
    ops: list = [Linear(out_features=draw(st.integers(1, 32)), bias=draw(st.booleans().map(lambda b: not b)))]
    if draw(st.booleans()):
        ops += [Norm(), ReLU()] if draw(st.booleans()) else [ReLU()]
    if draw(st.booleans()):
        ops.append(Dropout(rate=draw(st.sampled_from(_RATES[1:]))))
    return Stem(ops=tuple(ops))


@st.composite
def _linear_block(draw, index: int, *, max_layers: int, bottleneck: bool | None,
                  growth: tuple[int, int]) -> DenseBlock:
    """A dense block of linear layers (an MLP's): no kernel or groups; norm batch, layer or none."""
    use_bottleneck = draw(st.booleans()) if bottleneck is None else bottleneck
    return DenseBlock(
        index=index, layers=draw(st.integers(1, max_layers)), growth=draw(st.integers(*growth)),
        bottleneck=draw(st.integers(1, 4)) if use_bottleneck else None, kind="linear",
        dropout=draw(st.sampled_from(_RATES)), bias=draw(st.booleans().map(lambda b: not b)),
        activation=draw(st.sampled_from(_ACTIVATIONS)), norm=draw(st.sampled_from(_VECTOR_NORMS)),
        order=draw(st.sampled_from(("pre", "post"))))


@st.composite
def _vector_transition(draw, index: int) -> Transition:
    """BN-ReLU-Linear: a projection to ⌊θ·m⌋ (or N) features, no pool."""
    if draw(st.booleans()):
        compression, channels = draw(st.sampled_from(_COMPRESSIONS)), None
    else:
        compression, channels = None, draw(st.integers(1, 32))
    return Transition(index=index, compression=compression, channels=channels, bias=draw(st.booleans()),
                      dropout=draw(st.sampled_from(_RATES)), pool=None)


@st.composite
def _head(draw, *, vector: bool, rank: int = 2, per_axis: bool = False) -> Head:
    """A head; one output is a regression (the resolver's rule), more may be either task."""
    classes = draw(st.integers(1, 10))
    task: Task = "regression" if classes == 1 else draw(st.sampled_from(("classification", "regression")))
    window = None if vector or not draw(st.booleans()) else (  # shrinks to a global pool
        _axes(draw, (2, 1), rank, per_axis), _axes(draw, (2, 1), rank, per_axis))
    return Head(classes=classes, norm=draw(st.booleans().map(lambda b: not b)),
                pool="avg" if vector else draw(st.sampled_from(("avg", "max"))), window=window,
                dropout=draw(st.sampled_from(_RATES)),
                hidden=tuple(draw(st.lists(st.integers(1, 16), max_size=2))),
                activation=draw(st.sampled_from(_ACTIVATIONS)), task=task)


@st.composite
def _block(draw, index: int, *, max_layers: int, bottleneck: bool | None,
           growth: tuple[int, int], rank: int = 2, per_axis: bool = False, links: bool = False) -> DenseBlock:
    use_bottleneck = draw(st.booleans()) if bottleneck is None else bottleneck
    k = draw(st.integers(*growth))
    layers = draw(st.integers(1, max_layers))
    table = draw(_table(layers, k)) if links else {}
    # HarDNet-DS's separable layers: their own 1x1 conv (no bottleneck), a depthwise conv of the
    # layer's width (the resolver's, so `groups` stays 1), post-activation only
    separable = not use_bottleneck and draw(st.booleans())
    return DenseBlock(
        index=index, layers=layers, growth=k,
        bottleneck=draw(st.integers(1, 4)) if use_bottleneck else None,
        dropout=draw(st.sampled_from(_RATES)), bias=draw(st.booleans()),
        activation=draw(st.sampled_from(_ACTIVATIONS)), kernel=_axes(draw, (3, 1, 5), rank, per_axis),
        # groups divide the growth, hence the bottleneck's width; without one the input varies
        # (and so do per-layer widths)
        groups=(draw(st.sampled_from([g for g in range(1, 5) if k % g == 0]))
                if use_bottleneck and "widths" not in table and "width_factor" not in table else 1),
        order="post" if separable else draw(st.sampled_from(("pre", "post"))), separable=separable,
        # group norm's count depends on the channels entering the block: `_fit_norm_groups` picks it
        norm=draw(st.sampled_from(_MAP_NORMS)), **table)


@st.composite
def _table(draw, layers: int, growth: int) -> dict:
    """A connectivity table for a block of `layers` layers, as DenseBlock settings: a rule
    (DenseNet's first, so failures shrink to it) or an explicit table of reads, an emit rule or
    list, and sometimes per-layer widths."""
    out: dict = {}
    kind = draw(st.sampled_from(("all", "log", "harmonic", "chain", "random", "table")))
    if kind == "random":
        out["links"] = RandomLinks(p=draw(st.sampled_from((Fraction(1, 2), Fraction(1, 4), Fraction(1)))),
                                   seed=draw(st.integers(0, 5)))
    elif kind == "table":
        out["links"] = tuple(tuple(draw(st.lists(st.integers(0, j - 1), min_size=1, max_size=j, unique=True)))
                             for j in range(1, layers + 1))
    elif kind != "all":
        out["links"] = kind
    # at least two maps emitted, so a following transition's ⌊θ·m⌋ with θ ≥ 1/2 keeps a channel
    emit = draw(st.sampled_from(("all", "log", "odd", "list")))
    if emit == "list":
        out["emit"] = tuple(draw(st.lists(st.integers(0, layers), min_size=2, max_size=layers + 1, unique=True)))
    elif emit == "odd" and layers > 1 or emit == "log":
        out["emit"] = emit
    widths = draw(st.sampled_from(("growth", "factor", "list")))
    if widths == "factor":
        out["width_factor"] = draw(st.sampled_from((1.5, 1.7)))
    elif widths == "list":
        out["widths"] = tuple(draw(st.lists(st.integers(1, max(growth, 2) * 2), min_size=layers, max_size=layers)))
    return out


@st.composite
def _fit_norm_groups(draw, stages: list, channels: int, stem: Stem) -> list:
    """Each `norm=group` block gets a group count dividing every width its layers normalise."""
    c = next((op.out_channels for op in reversed(stem.ops) if isinstance(op, Conv)), channels)
    out = []
    for stage in stages:
        if isinstance(stage, DenseBlock):
            if stage.norm == "group":
                table = connectivity.table(stage)
                widths = [op.in_shape[0] for ell in range(1, stage.layers + 1)
                          for op in lowering.layer_ops(stage, (table.in_channels(c, ell), 1), None,
                                                       table.widths[ell - 1])
                          if op.kind == "groupnorm"]
                common = math.gcd(*widths) or 1
                stage = replace(stage, norm_groups=draw(st.sampled_from(
                    [g for g in range(min(common, 8), 0, -1) if common % g == 0])))
            c = lowering.block_out_channels(c, stage)
        else:
            c = lowering.transition_channels(c, stage)
        out.append(stage)
    return out


@st.composite
def _transition(draw, index: int, rank: int = 2, per_axis: bool = False) -> Transition:
    if draw(st.booleans()):
        compression, channels = draw(st.sampled_from(_COMPRESSIONS)), None
    else:
        compression, channels = None, draw(st.integers(1, 32))
    kernel = _axes(draw, (2, 3), rank, per_axis)
    # depthwise: HarDNet-DS's learned downsampling, a conv (whose size rounds down: no ceil)
    mode = draw(st.sampled_from(("avg", "max", "depthwise")))
    pool = Pool(mode=mode, kernel=kernel,
                stride=_axes(draw, (2, 1), rank, per_axis), padding=draw(_paddings(kernel, rank)),
                ceil=mode != "depthwise" and draw(st.booleans()))
    # pool=none: the 1x1 conv downsamples (stride 2) or keeps the size
    pooled = draw(st.booleans().map(lambda b: not b))
    return Transition(index=index, compression=compression, channels=channels,
                      bias=draw(st.booleans()), dropout=draw(st.sampled_from(_RATES)),
                      pool=pool if pooled else None,
                      stride=1 if pooled else _axes(draw, (2, 1), rank, per_axis),
                      # post: Conv1x1-BN-act (HarDNet's transitions, VoVNet's aggregation)
                      order=draw(st.sampled_from(("pre", "post"))),
                      activation=draw(st.sampled_from(_ACTIVATIONS)))


@st.composite
def networks(draw, *, max_blocks: int = 3, max_layers: int = 6, bottleneck: bool | None = None,
             growth: tuple[int, int] = (1, 16), input_sizes: tuple[int, int] = (1, 48),
             input_channels: tuple[int, int] = (1, 4), head: bool | None = None,
             ranks: tuple[int, ...] = (2,), same_transitions: bool = False, per_axis: bool = True,
             links: bool = False) -> Network:
    """A valid Network: blocks separated by transitions, maps never below 1x1.

    `bottleneck` True/False forces bottleneck layers on/off (None: either); `input_sizes` bounds
    the input side (the same along every axis), raised where needed to the network's minimum
    input size; `head` True/False forces a head (None: usually one); `ranks` lists the input
    ranks to draw from (0: feature vectors F, i.e. MLPs of linear layers with `input_channels`
    bounding F; 1: signals CxL, 2: images CxHxW, 3: volumes CxDxHxW; a volume's side is
    bounded by input_sizes' upper bound to the power 2/3, so it holds about as many values).
    `same_transitions` makes every transition the same (as `family_text` writes them);
    `per_axis` lets windows differ between axes (`kernel=1x7`; lists cannot hold those, so
    `family_texts` turns it off). `links` draws connectivity tables too (log, harmonic, chain,
    random and explicit reads; emit rules and lists; per-layer widths): DenseNet's relatives.
    Every draw may also hold the relatives' layer and transition choices: separable layers
    (HarDNet-DS), post-activation transitions with any activation, `pool=depthwise`, ceil-mode
    pools (stem and transitions) and a grouped stem conv.
    """
    rank = draw(st.sampled_from(ranks))
    if rank == 0:
        return draw(_mlp(max_blocks=max_blocks, max_layers=max_layers, bottleneck=bottleneck, growth=growth,
                         input_channels=input_channels, head=head, same_transitions=same_transitions))
    stem = draw(_stem(rank, per_axis))
    stages: list = []
    blocks = draw(st.integers(1, max_blocks))
    first = draw(_transition(1, rank, per_axis)) if same_transitions and blocks > 1 else None
    for i in range(1, blocks + 1):
        if i > 1:
            stages.append(replace(first, index=i - 1) if first else draw(_transition(i - 1, rank, per_axis)))
        stages.append(draw(_block(i, max_layers=max_layers, bottleneck=bottleneck, growth=growth,
                                  rank=rank, per_axis=per_axis, links=links)))
    with_head = draw(st.booleans().map(lambda b: not b)) if head is None else head
    net_head = None
    if with_head:
        net_head = draw(_head(vector=False, rank=rank, per_axis=per_axis))
    channels = draw(st.integers(*input_channels))
    stem = draw(_group_stem_conv(stem, channels))
    stages = draw(_fit_norm_groups(stages, channels, stem))
    probe = Network(name="n", input=(channels,) + (1,) * rank, stem=stem, stages=tuple(stages),
                    head=net_head)
    least = graph_.min_input_size(graph_.spatial_plan(probe), rank=rank)
    lo, hi = input_sizes
    if rank == 3:
        hi = max(lo, round(hi ** (2 / 3)))
    side = draw(st.integers(max(lo, least), max(hi, least)))
    name = draw(st.sampled_from(("n", "net", "densenet_x")))
    return Network(name=name, input=(channels,) + (side,) * rank, stem=stem, stages=tuple(stages),
                   head=net_head)


@st.composite
def _mlp(draw, *, max_blocks: int, max_layers: int, bottleneck: bool | None, growth: tuple[int, int],
         input_channels: tuple[int, int], head: bool | None, same_transitions: bool) -> Network:
    """A valid MLP: `input F`, a vector stem, blocks of linear layers, linear transitions."""
    stem = draw(_vector_stem())
    stages: list = []
    blocks = draw(st.integers(1, max_blocks))
    first = draw(_vector_transition(1)) if same_transitions and blocks > 1 else None
    transitions = 0
    for i in range(1, blocks + 1):
        # consecutive blocks with no transition between them are an MLP's (the seeds')
        if i > 1 and (first or draw(st.booleans())):
            transitions += 1
            stages.append(replace(first, index=transitions) if first else draw(_vector_transition(transitions)))
        stages.append(draw(_linear_block(i, max_layers=max_layers, bottleneck=bottleneck, growth=growth)))
    with_head = draw(st.booleans().map(lambda b: not b)) if head is None else head
    name = draw(st.sampled_from(("n", "mlp")))
    return Network(name=name, input=(draw(st.integers(*input_channels)),), stem=stem, stages=tuple(stages),
                   head=draw(_head(vector=True)) if with_head else None)



@st.composite
def family_texts(draw, **knobs) -> tuple[Network, str]:
    """A drawn network (with equal transitions) and its `family_text`."""
    network = draw(networks(same_transitions=True, per_axis=False, **knobs))
    if len({b.norm == "group" for b in network.blocks}) > 1:
        # one loop writes norm_groups for every block or none: mixed blocks take layer norm
        network = replace(network, stages=tuple(
            replace(s, norm="layer", norm_groups=32) if isinstance(s, DenseBlock) and s.norm == "group" else s
            for s in network.stages))
    return network, family_text(network)


@st.composite
def spec_texts(draw, **knobs) -> str:
    """Valid spec text: `spec_text` of a drawn network; takes the knobs of `networks()`."""
    return spec_text(draw(networks(**knobs)))


__all__ = ["assert_dense_invariants", "family_text", "family_texts", "networks", "spec_text", "spec_texts"]
