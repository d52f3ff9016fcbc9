"""The op table: every kind of op densedsl knows, each defined once.

An op kind is one class (sqlglot's shape: one class per expression, its generator beside it).
Each class states everything every stage needs about its kind:

- `make(...)`: the op at a given input shape, with its output shape, parameters, buffers and
  MACs (FLOPs are 2·MACs, torch.utils.flop_counter's convention);
- `storage`, `saves`, `saves_recomputed`, `saved_bytes`, `fixed_bytes`: what autograd keeps
  for backward in standard and in memory-efficient mode (`analysis` adds these up);
- `window`: its kernel and stride when it moves over the map (size chain, receptive field);
- `state_entries`: tensors it adds to a state_dict;
- `token`, `words`, `describe`: its text in diagrams, recipes and diagnostics;
- `constructor`: the torch.nn class and arguments that run it, from which both `module` (the
  model's) and `source` (the `.py` export's text) are made.

Stages ask the table (`kind_of(kind).window(node)`) rather than keeping their own rules; a few
still match on kind names where a recipe is about specific ops (the lowering's in-place and
shared-entry rules, the engine's folds, the diagrams' grouping). A new kind of op is one new class
here (and the lowering that emits it, in `ir/lowering.py`). Shapes are `(C, *spatial)`
for maps of any rank (1-D signals, 2-D images, 3-D volumes) and `(N,)` for vectors; an op's
rank is read off its input shape, so one class serves Conv1d, Conv2d and Conv3d alike.

Nothing here imports torch at module level: `check`, `summary` and `render` read the table too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping

from ..core.units import axes_text, dims_text, float_text
from ..language.network import Axes, Shape, per_axis

Attrs = Mapping[str, Any]  # an op's attributes: a graph node's, or `Op.attributes()`

MASK_BYTES = 1      # dropout masks are torch.bool
INDEX_BYTES = 8     # max-pool indices are int64
STAT_BYTES = 4      # BN saves per-channel mean and inverse std in float32, even under autocast


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of the compiled model: what `graph.lower` turns into a node and
    `modules`/`export` into a torch module.

    `name` is the node id inside its stage (`norm1`, `conv0`, `pool`); `module` the state_dict
    prefix for ops with weights, or None. `attrs` holds the op-specific attributes of
    docs/graph.md.
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

    def attributes(self) -> dict[str, Any]:
        """The op as a graph node sees it: attrs plus kind and shapes."""
        return {"kind": self.kind, "in_shape": self.in_shape, "out_shape": self.out_shape,
                "params": self.params, **dict(self.attrs)}

    @property
    def spec(self) -> "OpKind":
        return kind_of(self.kind)


# --- helpers -----------------------------------------------------------------------------------

def numel(shape: Shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def window_out(size: int, kernel: int, stride: int, padding: int, ceil: bool = False) -> int:
    """Output length of a conv or pool along one axis (floor mode, as PyTorch's default; `ceil`
    as a pool's ceil_mode, which keeps a last, partial window unless it would start in the right
    padding: PyTorch's pooling_output_shape).

    Can be 0 or negative: callers check `size + 2·padding >= kernel` first.
    """
    if not ceil:
        return (size + 2 * padding - kernel) // stride + 1
    out = -(-(size + 2 * padding - kernel) // stride) + 1
    return out - 1 if (out - 1) * stride >= size + padding else out


def rank(shape: Shape) -> int:
    """Spatial dimensions of a map: 1 for (C, L), 2 for (C, H, W), 3 for (C, D, H, W)."""
    return len(shape) - 1


def _sized(shape: Shape, kernel: Axes, stride: Axes, padding: Axes, ceil: bool = False) -> Shape:
    r = rank(shape)
    return tuple(window_out(s, k, st, p, ceil) for s, k, st, p in
                 zip(shape[1:], per_axis(kernel, r), per_axis(stride, r), per_axis(padding, r)))


def _nn(name: str, r: int) -> str:
    """`Conv`, 2 → `Conv2d`: torch names its modules by rank (a vector's norm is BatchNorm1d)."""
    return f"{name}{max(r, 1)}d"


Saves = Literal["nothing", "input", "output", "inputs"]
Storage = Literal["own", "view", "in_place", "identity_in_eval"]


class OpKind:
    """What every stage needs to know about one kind of op; subclasses override."""

    kind: ClassVar[str]
    layer: ClassVar[bool] = False          # counted in depth (the paper's conv and linear layers)
    storage: ClassVar[Storage] = "own"     # own: a new tensor; view: its input's; in_place: its
    #                                        input's when nothing else reads that (ReLU inplace)
    saves: ClassVar[Saves] = "nothing"     # kept for backward in standard mode
    saves_recomputed: ClassVar[Saves] = "nothing"  # kept inside a recomputed (efficient) layer
    normalises: ClassVar[bool] = False     # needs > 1 value per channel in training
    pointwise: ClassVar[bool] = False      # acts per value or channel, keeps the shape
    computes: ClassVar[bool] = True        # False for graph-only kinds (data flow, no module)

    def saved_bytes(self, a: Attrs) -> int:
        """Bytes per sample kept besides activations (masks, indices), standard mode."""
        return 0

    def fixed_bytes(self, a: Attrs) -> int:
        """Batch-independent bytes kept for backward in both modes."""
        return 0

    def window(self, a: Attrs) -> tuple[Axes, Axes, Axes] | None:
        """(kernel, stride, padding), each one number for every spatial axis or one per axis
        (`per_axis` reads both), for ops that slide a window."""
        return None

    def storage_of(self, a: Attrs) -> Storage:
        """Where this op's output lives (`storage`, unless the op's attributes say otherwise)."""
        return self.storage

    def one_value_fails(self, a: Attrs) -> Literal["train", "always"] | None:
        """When a batch of one with a single value per channel makes torch refuse this op: BN in
        training (`normalises`); a group norm with one channel per group in any mode."""
        return "train" if self.normalises else None

    def least_input(self, a: Attrs) -> tuple[int, ...]:
        """The smallest input length along each spatial axis that a windowed op accepts."""
        kernel, _, padding = self.window(a) or (1, 1, 0)
        r = rank(a["in_shape"])
        return tuple(max(1, k - 2 * p) for k, p in zip(per_axis(kernel, r), per_axis(padding, r)))

    def state_entries(self, a: Attrs) -> int:
        return 0

    def token(self, a: Attrs) -> str:
        """The op in a recipe line: `BN`, `Conv3x3(32)`."""
        return self.kind

    def words(self, a: Attrs) -> tuple[str, str]:
        """A diagram node's (title, detail line)."""
        return self.kind, ""

    def describe(self, a: Attrs) -> str:
        """The op in a diagnostic: `avg pool 2x2 stride 2`."""
        return self.words(a)[0]

    def constructor(self, a: Attrs) -> tuple[str, tuple, dict[str, Any]]:
        """The torch.nn class that runs it and the arguments that build it: the one statement
        from which both `module` and `source` are made, so model and export cannot differ."""
        raise NotImplementedError(f"{self.kind} has no torch module")

    def module(self, a: Attrs, dd: dict) -> Any:
        """The torch module that runs it; `dd` (device, dtype) reaches modules with state."""
        from torch import nn
        cls, args, kwargs = self.constructor(a)
        return getattr(nn, cls)(*args, **kwargs, **(dd if self.state_entries(a) else {}))

    def source(self, a: Attrs) -> str:
        """Python source that builds `module(a)`: `nn.Conv2d(64, 128, 1, bias=False)`."""
        cls, args, kwargs = self.constructor(a)
        return f"nn.{cls}({', '.join([*map(_literal, args), *(f'{k}={_literal(v)}' for k, v in kwargs.items())])})"


# --- graph-only kinds: data flow, no computation ----------------------------------------------

class Input(OpKind):
    kind = "input"
    computes = False


class Output(OpKind):
    kind = "output"
    storage = "view"
    computes = False


class Feature(OpKind):
    """x_ℓ of a dense block: a name for the tensor its layer made."""
    kind = "feature"
    storage = "view"
    computes = False


class Concat(OpKind):
    """A dense layer's gathering of x0 … x(ℓ−1), or a block's output: part of the layer's data
    flow (DenseLayer's torch.cat), no module of its own."""
    kind = "concat"
    saves_recomputed = "inputs"  # a recomputed layer keeps the maps it concatenates
    computes = False

    def storage_of(self, a):
        # one map alone (DenseNet's layer 1 reads x0; a chain's layers their predecessor; a
        # block emitting one output) is handed on without a torch.cat (`run_block`, DenseLayer)
        return "view" if a.get("maps") == 1 else "own"


# --- computing kinds -------------------------------------------------------------------------------

class Conv(OpKind):
    kind = "conv"
    layer = True
    saves = "input"
    saves_recomputed = "output"  # efficient mode keeps conv outputs, recomputes the rest

    @staticmethod
    def make(name: str, shape: Shape, cout: int, kernel: Axes, stride: Axes, padding: Axes, bias: bool,
             module: str | None, groups: int = 1) -> Op:
        """`groups` splits the channels into independent convs: each output sees c/groups inputs
        (the attribute is present only when it is not 1, so ungrouped graphs read as before)."""
        c = shape[0]
        out = (cout, *_sized(shape, kernel, stride, padding))
        taps = numel(per_axis(kernel, rank(shape))) * (c // groups)
        return Op(name, "conv", shape, out, cout * taps + (cout if bias else 0), 0,
                  cout * taps * numel(out[1:]), module,
                  (("in_channels", c), ("out_channels", cout), ("kernel", kernel), ("stride", stride),
                   ("padding", padding), ("bias", bias)) + ((("groups", groups),) if groups != 1 else ()))

    def window(self, a):
        return a["kernel"], a["stride"], a["padding"]

    def state_entries(self, a):
        return 2 if a["bias"] else 1

    def token(self, a):
        stride = f"/{axes_text(a['stride'])}" if a["stride"] != 1 else ""
        groups = f"g{a['groups']}" if a.get("groups", 1) != 1 else ""
        return f"Conv{dims_text(a['kernel'], rank(a['in_shape']))}{stride}{groups}({a['out_channels']})"

    def words(self, a):
        r = rank(a["in_shape"])
        stride = f" /{axes_text(a['stride'])}" if a["stride"] != 1 else ""
        size = "x".join(map(str, a["out_shape"][1:]))
        return (f"conv {dims_text(a['kernel'], r)}{stride}",
                f"{a['in_channels']} → {a['out_channels']} ch · {size}")

    def describe(self, a):
        return (f"conv {dims_text(a['kernel'], rank(a['in_shape']))} stride {axes_text(a['stride'])} "
                f"padding {axes_text(a['padding'])}")

    def constructor(self, a):
        kwargs = {"stride": a["stride"]} if a["stride"] != 1 else {}
        kwargs |= {"padding": a["padding"]} if a["padding"] else {}
        kwargs |= {"groups": a["groups"]} if a.get("groups", 1) != 1 else {}
        return (_nn("Conv", rank(a["in_shape"])), (a["in_channels"], a["out_channels"], a["kernel"]),
                {**kwargs, "bias": a["bias"]})


class Norm(OpKind):
    """Batch normalisation: affine weight and bias (params), running mean and var (buffers)."""
    kind = "norm"
    saves = "input"
    normalises = True
    pointwise = True

    @staticmethod
    def make(name: str, shape: Shape, module: str | None) -> Op:
        c = shape[0]
        return Op(name, "norm", shape, shape, 2 * c, 2 * c, 0, module, (("channels", c),))

    def fixed_bytes(self, a):
        return 2 * a["channels"] * STAT_BYTES  # saved per-channel mean and inverse std

    def state_entries(self, a):
        return 5  # weight, bias, running_mean, running_var, num_batches_tracked

    def token(self, a):
        return "BN"

    def words(self, a):
        return "batch norm", f"{a['channels']} ch"

    def constructor(self, a):
        return _nn("BatchNorm", rank(a["in_shape"])), (a["channels"],), {}


# norm= choices that run as torch's GroupNorm: (diagram words, recipe token); `group` adds its count
GROUP_NORMS = {"group": ("group norm", "GN"), "instance": ("instance norm", "IN"),
               "layer": ("layer norm", "LN")}


class GroupNorm(OpKind):
    """`norm=group`, `instance` or `layer` of a dense layer: torch's GroupNorm(groups, C), affine,
    no running statistics. Instance norm is GroupNorm(C, C) (the same function and parameters as
    InstanceNorm2d(C, affine=True)); layer norm over (C, H, W) is GroupNorm(1, C), the usual
    "LayerNorm" of conv maps. Backward saves the input and a mean and 1/std per sample and group
    (float32, derivatives.yaml: native_group_norm)."""

    kind = "groupnorm"
    saves = "input"
    pointwise = True

    @staticmethod
    def make(name: str, shape: Shape, module: str | None, style: str, groups: int) -> Op:
        c = shape[0]
        return Op(name, "groupnorm", shape, shape, 2 * c, 0, 0, module,
                  (("channels", c), ("groups", groups), ("style", style)))

    def saved_bytes(self, a):
        return 2 * a["groups"] * STAT_BYTES

    def one_value_fails(self, a):
        # F.group_norm refuses (batch·C/groups)·∏spatial == 1 in eval and in training alike
        return "always" if a["channels"] == a["groups"] else None

    def state_entries(self, a):
        return 2  # weight, bias

    def token(self, a):
        short = GROUP_NORMS[a["style"]][1]
        return f"{short}{a['groups']}" if a["style"] == "group" else short

    def words(self, a):
        detail = f"{a['channels']} ch" + (f" · {a['groups']} groups" if a["style"] == "group" else "")
        return GROUP_NORMS[a["style"]][0], detail

    def constructor(self, a):
        return "GroupNorm", (a["groups"], a["channels"]), {}


class ReLU(OpKind):
    """In place (torchvision's), unless `inplace` is False: a ReLU that opens a dense layer with
    no norm before it would otherwise overwrite the block's input, which later layers read."""

    kind = "relu"
    storage = "in_place"
    saves = "output"
    pointwise = True

    @staticmethod
    def make(name: str, shape: Shape, inplace: bool = True) -> Op:
        return Op(name, "relu", shape, shape, attrs=() if inplace else (("inplace", False),))

    def storage_of(self, a):
        return "in_place" if a.get("inplace", True) else "own"

    def token(self, a):
        return "ReLU"

    def words(self, a):
        return "ReLU", ""

    def constructor(self, a):
        return "ReLU", (), {"inplace": a.get("inplace", True)}


# activation name → torch.nn class; `relu` stays the ReLU kind (in place, and the engine folds it)
ACTIVATIONS = {"relu6": "ReLU6", "leaky_relu": "LeakyReLU", "silu": "SiLU", "gelu": "GELU", "elu": "ELU"}


class Activation(OpKind):
    """An activation other than ReLU. Not in place (torch's defaults), and each of these saves its
    input for backward (derivatives.yaml: hardtanh, leaky_relu, silu, gelu and elu backward read
    `self`), so the memory model keeps both the input and the output."""

    kind = "activation"
    storage = "own"
    saves = "input"
    pointwise = True

    @staticmethod
    def make(name: str, shape: Shape, fn: str) -> Op:
        return Op(name, "activation", shape, shape, attrs=(("fn", fn),))

    def token(self, a):
        return ACTIVATIONS[a["fn"]]

    def words(self, a):
        return ACTIVATIONS[a["fn"]], ""

    def constructor(self, a):
        return ACTIVATIONS[a["fn"]], (), {}


class Dropout(OpKind):
    kind = "dropout"
    storage = "identity_in_eval"
    pointwise = True

    @staticmethod
    def make(name: str, shape: Shape, rate: float) -> Op:
        return Op(name, "dropout", shape, shape, attrs=(("rate", rate),))

    def saved_bytes(self, a):
        return numel(a["out_shape"]) * MASK_BYTES if a["rate"] > 0 else 0

    def token(self, a):
        return f"Dropout({float_text(a['rate'])})"

    def words(self, a):
        return f"dropout {float_text(a['rate'])}", ""

    def constructor(self, a):
        return "Dropout", (a["rate"],), {}


class Pool(OpKind):
    """Average or max pooling over a window, or (global) over the whole map."""
    kind = "pool"
    saves = "input"

    @staticmethod
    def make(name: str, shape: Shape, mode: str, kernel: Axes, stride: Axes, padding: Axes,
             ceil: bool = False) -> Op:
        """`ceil`: PyTorch's ceil_mode (VoVNet's pools); the attribute is present only when set."""
        out = (shape[0], *_sized(shape, kernel, stride, padding, ceil))
        return Op(name, "pool", shape, out, attrs=(("mode", mode), ("kernel", kernel), ("stride", stride),
                                                   ("padding", padding), ("global", False))
                  + ((("ceil", True),) if ceil else ()))

    @staticmethod
    def make_global(name: str, shape: Shape, mode: str) -> Op:
        return Op(name, "pool", shape, (shape[0],) + (1,) * rank(shape),
                  attrs=(("mode", mode), ("kernel", None), ("stride", None), ("padding", 0),
                         ("global", True)))

    def saved_bytes(self, a):
        return numel(a["out_shape"]) * INDEX_BYTES if a["mode"] == "max" else 0

    def window(self, a):
        return None if a["global"] else (a["kernel"], a["stride"], a["padding"])

    def least_input(self, a):
        r = rank(a["in_shape"])
        if a["mode"] == "avg" and r == 3:
            return per_axis(a["kernel"], 3)  # PyTorch's avg_pool3d checks the unpadded input against the kernel
        if a.get("ceil") and not a["global"]:
            # ceil_mode keeps a window that starts inside the input however far it overhangs:
            # one output while size + 2p − k > −s (PyTorch's pooling_output_shape; checked
            # against torch for every kernel ≤ 4, stride ≤ 3, pad ≤ k/2, rank and mode)
            return tuple(max(1, k - 2 * p - s + 1) for k, s, p in
                         zip(per_axis(a["kernel"], r), per_axis(a["stride"], r), per_axis(a["padding"], r)))
        return super().least_input(a)

    def _mode(self, a) -> str:
        return "Max" if a["mode"] == "max" else "Avg"

    def token(self, a):
        if a["global"]:
            return f"Global{self._mode(a)}Pool"
        return f"{self._mode(a)}Pool{dims_text(a['kernel'], rank(a['in_shape']))}/{axes_text(a['stride'])}"

    def words(self, a):
        out = "x".join(map(str, a["out_shape"]))
        if a["global"]:
            return f"global {a['mode']}pool", out
        pad = f" pad {axes_text(a['padding'])}" if a["padding"] else ""
        return f"{a['mode']}pool {dims_text(a['kernel'], rank(a['in_shape']))} /{axes_text(a['stride'])}{pad}", out

    def describe(self, a):
        pad = f" padding {axes_text(a['padding'])}" if a["padding"] else ""
        ceil = " ceil" if a.get("ceil") else ""
        return (f"{a['mode']} pool {dims_text(a['kernel'], rank(a['in_shape']))} stride "
                f"{axes_text(a['stride'])}{pad}{ceil}")

    def constructor(self, a):
        r = rank(a["in_shape"])
        if a["global"]:
            return _nn(f"Adaptive{self._mode(a)}Pool", r), (1,), {}
        padding = {"padding": a["padding"]} if a["padding"] else {}
        ceil = {"ceil_mode": True} if a.get("ceil") else {}
        return _nn(f"{self._mode(a)}Pool", r), (a["kernel"],), {"stride": a["stride"], **padding, **ceil}


class Flatten(OpKind):
    kind = "flatten"
    storage = "view"

    @staticmethod
    def make(name: str, shape: Shape) -> Op:
        return Op(name, "flatten", shape, (numel(shape),))

    def token(self, a):
        return "Flatten"

    def words(self, a):
        return "flatten", "x".join(map(str, a["out_shape"]))

    def constructor(self, a):
        return "Flatten", (), {}


class Linear(OpKind):
    """A fully-connected layer on a vector `(F,)`: the head's classifier and hidden layers, an
    MLP's stem and dense layers. In a recomputed (memory-efficient) dense layer it keeps its
    output, as a conv does."""

    kind = "linear"
    layer = True
    saves = "input"
    saves_recomputed = "output"

    @staticmethod
    def make(name: str, shape: Shape, out_features: int, module: str | None, bias: bool = True) -> Op:
        """`bias` False appears as an attribute only then, so existing graphs read as before."""
        inf = shape[0]
        return Op(name, "linear", shape, (out_features,), inf * out_features + (out_features if bias else 0), 0,
                  inf * out_features, module, (("in_features", inf), ("out_features", out_features))
                  + ((("bias", False),) if not bias else ()))

    def state_entries(self, a):
        return 2 if a.get("bias", True) else 1

    def token(self, a):
        return f"Linear({a['out_features']})"

    def words(self, a):
        return "linear", f"{a['in_features']} → {a['out_features']}"

    def constructor(self, a):
        return "Linear", (a["in_features"], a["out_features"]), ({} if a.get("bias", True) else {"bias": False})


TABLE: dict[str, OpKind] = {cls.kind: cls() for cls in (
    Input, Output, Feature, Concat, Conv, Norm, GroupNorm, ReLU, Activation, Dropout, Pool, Flatten, Linear)}


def _literal(value: Any) -> str:
    """`value` as a Python literal in generated source. Only plain values pass, rebuilt as their
    base type first: a subclass of int whose repr() is code (a hand-built Network) cannot reach
    the `.py` export."""
    if value is None or isinstance(value, bool):
        return repr(value if value is None else bool(value))
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, str):
        return repr(str(value))
    if isinstance(value, tuple):
        items = [_literal(v) for v in value]
        return f"({', '.join(items)}{',' if len(items) == 1 else ''})"
    raise TypeError(f"cannot write {type(value).__name__} into generated source")


def kind_of(kind: str) -> OpKind:
    return TABLE[kind]


def module(op: Op, dd: dict | None = None) -> Any:
    """The torch module of a lowered op."""
    return op.spec.module(op.attributes(), dd or {})


def source(op: Op) -> str:
    return op.spec.source(op.attributes())
