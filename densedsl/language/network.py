"""The fully explicit network: what `resolve` produces and every later stage consumes.

Every value here is a plain int, bool, str, float or `Fraction`: defaults applied, parameters
substituted, arithmetic done, `repeat` unrolled. Spans point back at the spec text that caused
each piece (for a repeated statement, at the statement inside the `repeat`). Channel counts that
depend on the data flow (a block's input, a transition's ⌊θ·m⌋) are *not* stored: the lowering
computes them (`ir/lowering.py`, from the block's connectivity table).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Literal, Union

from ..core.source import Span

Shape = tuple[int, ...]  # (F,) a feature vector; (C, L), (C, H, W) or (C, D, H, W): channels, then one size per axis
Order = Literal["pre", "post"]
# A dense block's layers: convolutions on maps, or fully-connected (Linear) layers on vectors (MLPs)
LayerKind = Literal["conv", "linear"]
# A dense layer's normalisation: batch norm (the paper's), group norm (GroupNorm(G, C), maps only),
# instance norm (GroupNorm(C, C), maps only), layer norm (LayerNorm on vectors, GroupNorm(1, C) on
# maps), or none
NormKind = Literal["batch", "group", "instance", "layer", "none"]
# What the head's outputs are: class logits (cross-entropy applies the softmax) or regression values
Task = Literal["classification", "regression"]
# A dense layer's activation (torch.nn: ReLU, ReLU6, LeakyReLU, SiLU, GELU, ELU); relu is the paper's
# `none` leaves the activation out (the seeds' DenseNet-MLP layers have none)
ActivationFn = Literal["relu", "relu6", "leaky_relu", "silu", "gelu", "elu", "none"]
PoolMode = Literal["avg", "max"]
# What a transition's `pool=` downsamples with: a pool, or `depthwise`, a learned depthwise conv
# (groups = channels) and its batch norm on the same window (HarDNet-DS's stride-2 downsampling)
TransitionPool = Literal["avg", "max", "depthwise"]


# A window's kernel, stride or padding: one number for every spatial axis, or one per axis (1x7)
Axes = int | tuple[int, ...]


def per_axis(value: Axes, r: int) -> tuple[int, ...]:
    """`value` along each of r axes: 3 → (3, 3) in rank 2; (1, 7) stays (1, 7)."""
    return tuple(value) if isinstance(value, tuple) else (value,) * r


def _span() -> Span | None:
    return field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Conv:
    """A stem convolution."""

    out_channels: int
    kernel: Axes = 3
    stride: Axes = 1
    padding: Axes = 1
    bias: bool = False
    groups: int = 1  # = channels: a depthwise conv (HarDNet-DS's stride-2 stem downsampling)
    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Norm:
    """Batch normalisation (affine, running statistics)."""

    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReLU:
    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Activation:
    """A stem activation other than ReLU (`relu6`: HarDNet's stem is Conv-BN-ReLU6 twice)."""

    fn: ActivationFn
    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Pool:
    mode: TransitionPool = "avg"  # a stem's maxpool/avgpool is avg or max; depthwise: transitions only
    kernel: Axes = 2
    stride: Axes = 2
    padding: Axes = 0
    ceil: bool = False  # PyTorch's ceil_mode: a last, partial window counts (VoVNet's max pools)
    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Dropout:
    rate: float
    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Linear:
    """A stem fully-connected layer (feature-vector inputs): `linear 64`."""

    out_features: int
    bias: bool = True
    span: Span | None = _span()


StemOp = Union[Conv, Norm, ReLU, Activation, Pool, Dropout, Linear]


@dataclass(frozen=True, slots=True, kw_only=True)
class Stem:
    ops: tuple[StemOp, ...] = ()
    span: Span | None = _span()


# Who a dense layer reads and what its block emits (DenseNet's relatives). The rule is what the
# user wrote; `ir.connectivity.table` expands it once into a table of reads, widths and emits,
# and every later stage reads the table, never the rule.
LinkRule = Literal["all", "log", "harmonic", "chain"]
EmitRule = Literal["all", "log", "odd"]


@dataclass(frozen=True, slots=True)
class RandomLinks:
    """The seeds' proposal: each earlier output kept with probability `p`, the previous one
    always; the same `seed` gives the same table, so a spec names one network."""

    p: Fraction
    seed: int


# A rule, or an explicit table: layer j's reads as indexes into x0 … x(j−1) (0 is the block's
# input), in concatenation order, one tuple per layer
Links = Union[LinkRule, RandomLinks, tuple[tuple[int, ...], ...]]
# A rule, or an explicit list of indexes into x0 … xL, in the order the block emits them
Emit = Union[EmitRule, tuple[int, ...]]


@dataclass(frozen=True, slots=True, kw_only=True)
class DenseBlock:
    """L dense layers; layer ℓ (1-based) sees k0 + growth·(ℓ−1) channels and adds `growth`.

    `bottleneck` is the width factor of the 1x1 conv (4 → 4·growth channels) or None for none.
    Pre-activation layers run BN-ReLU-Conv (the paper); post-activation run Conv-BN-ReLU;
    `activation` replaces the ReLU. Dropout, when > 0, follows every conv of the layer.

    `kind="linear"` (a feature-vector network, an MLP) makes the layers fully connected: the
    same recipe with Linear in place of each conv (the bottleneck a Linear to bottleneck·growth
    features), `norm` batch (BatchNorm1d), layer (LayerNorm on vectors; on maps GroupNorm(1, C)) or none, `activation` may be
    `none`; `kernel` and `groups` do not apply.
    """

    index: int  # 1-based among dense blocks: compiled as features.denseblock{index}
    layers: int
    growth: int
    bottleneck: int | None = None
    dropout: float = 0.0
    bias: bool = False
    order: Order = "pre"
    activation: ActivationFn = "relu"
    kernel: Axes = 3  # the growth conv's (odd along each axis, padded to keep the size)
    groups: int = 1  # the growth conv's groups
    kind: LayerKind = "conv"
    norm: NormKind = "batch"
    norm_groups: int = 32  # GroupNorm's group count, for norm="group" only (Wu & He's default)
    links: Links = "all"   # DenseNet: layer j reads x0 … x(j−1)
    emit: Emit = "all"     # DenseNet: the block emits x0 … xL
    # Layer widths: HarDNet's `growth · width_factor^(times 2 divides j)`, rounded as its code
    # rounds, or one explicit width per layer; neither: every layer adds `growth`
    width_factor: float | None = None
    widths: tuple[int, ...] | None = None
    # depthwise-separable layers (HarDNet-DS): a 1x1 conv to the layer's width with norm and
    # activation, then a depthwise `kernel` conv (groups = width) with norm only; post-activation
    separable: bool = False
    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """BN-ReLU-Conv1x1-(Dropout)-Pool; `order="post"` runs Conv1x1-BN-ReLU instead (HarDNet's
    transitions, VoVNet's aggregation), and `activation` replaces the ReLU.

    Exactly one of `compression` (output ⌊θ·m⌋ for m input channels, 0 < θ ≤ 1) and `channels`
    (an explicit output count) is set. A pool of mode `depthwise` is a depthwise conv and its BN
    on the pool's window (HarDNet-DS). `pool` None (`pool=none`) leaves the pool out; `stride` is
    the 1x1 conv's (`pool=none stride=2` downsamples in the conv instead of a pool).
    """

    index: int  # 1-based among transitions: compiled as features.transition{index}
    compression: Fraction | None = None
    channels: int | None = None
    bias: bool = False
    dropout: float = 0.0
    pool: Pool | None = field(default_factory=Pool)
    stride: Axes = 1
    order: Order = "pre"
    activation: ActivationFn = "relu"
    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Head:
    """On a feature vector (an MLP): (BN-ReLU) → (Dropout) → [hidden] → Linear(classes); no pool.

    On maps: (BN-ReLU) → pool → flatten → (Dropout) → [Linear(h) → activation → (Dropout)] per hidden
    width → Linear(classes), bias on.

    `window` None means a global pool (output 1x1); otherwise (kernel, stride) of a fixed pooling
    window whose flattened output feeds the classifier, as in the seeds' Keras model.
    """

    classes: int
    norm: bool = True
    pool: PoolMode = "avg"
    window: tuple[Axes, Axes] | None = None
    dropout: float = 0.0
    hidden: tuple[int, ...] = ()          # widths of fully-connected layers before the classifier
    activation: ActivationFn = "relu"     # after each hidden layer
    # What training optimises: classification (`classes` logits, cross-entropy, which applies the
    # softmax: it is not a layer) or regression (`classes` real outputs, MSE). The spec's
    # `task=`; without it, regression when classes=1 (a one-class classifier learns nothing).
    task: Task = "classification"
    span: Span | None = _span()


ExpectKey = Literal["params", "buffers", "macs", "flops", "channels", "connections", "depth"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Expectation:
    """`expect key=value`: the analysed figure must lie within value ± tolerance.

    The tolerance is half a unit of the last digit written (`5.668G` → ±0.0005 G), so an exact
    integer must match exactly.
    """

    key: ExpectKey
    value: Fraction
    tolerance: Fraction
    text: str
    span: Span | None = _span()


Stage = Union[DenseBlock, Transition]
ParamValue = Union[int, float, Fraction, bool, str, tuple["ParamValue", ...]]  # a tuple: a list value


@dataclass(frozen=True, slots=True, kw_only=True)
class Network:
    """A resolved network. `input` is `(F,)` for a feature vector (an MLP), `(C, *sizes)` for a
    map. Whether it classifies or regresses is `head.task` (None without a head); `task` reads it.
    """

    name: str
    input: Shape
    stem: Stem = field(default_factory=Stem)
    stages: tuple[Stage, ...] = ()
    head: Head | None = None
    expectations: tuple[Expectation, ...] = ()
    parameters: tuple[tuple[str, ParamValue], ...] = ()  # the values used, after overrides
    span: Span | None = _span()
    input_span: Span | None = _span()

    def with_input(self, shape: Shape) -> "Network":
        """The same network at another input shape.

        `expect macs/flops` state figures at the spec's own input size (and `params` too when a
        fixed head window makes the classifier's width depend on it, or when the input is a
        feature vector), so those are dropped.
        """
        # an MLP's first linear layer takes every input feature: its params follow F too
        sized = {"macs", "flops"} | ({"params"} if self.head and self.head.window or self.vector else set())
        return replace(self, input=tuple(shape),
                       expectations=tuple(e for e in self.expectations if e.key not in sized))

    @property
    def task(self) -> Task | None:
        """`classification` or `regression` (training picks its loss by it); None without a head."""
        return self.head.task if self.head is not None else None

    @property
    def vector(self) -> bool:
        """Whether the input is a feature vector `(F,)` (an MLP) rather than a map."""
        return len(self.input) == 1

    @property
    def blocks(self) -> tuple[DenseBlock, ...]:
        return tuple(s for s in self.stages if isinstance(s, DenseBlock))

    @property
    def transitions(self) -> tuple[Transition, ...]:
        return tuple(s for s in self.stages if isinstance(s, Transition))
