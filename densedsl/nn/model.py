"""PyTorch modules for a resolved `Network`, laid out like torchvision's DenseNet, built from the
lowered op list (`lowering.lower`, which the analysis holds): every module comes from the op table
(`ops.py`), so the model cannot drift from the figures.

The structure and the names follow torchvision (`pytorch/vision: torchvision/models/densenet.py`,
BSD-3-Clause) for every spec, because module names are the weight format:
`features.{conv0,norm0,relu0,pool0}`, `features.denseblock{i}.denselayer{l}.{norm1,relu1,conv1,
norm2,relu2,conv2}`, `features.transition{j}.{norm,relu,conv,pool}`, `features.norm5` and
`classifier`. The split entry points (`forward_features`, `forward_head`, `feature_info`,
`set_grad_checkpointing`) follow timm (`huggingface/pytorch-image-models: timm/models/densenet.py`).
Maps of any rank work: the op table picks Conv1d/2d/3d, BatchNorm1d/2d/3d and the pools.

Forward paths that compute the same function:
- training (module in train mode, autograd on): a block whose layers start BN-ReLU-conv keeps its
  features in one shared buffer and runs each layer's concat-BN-ReLU as one autograd Function
  (`shared.py`, Pleiss et al. 2017); on CPU a rank-2 NCHW input is converted to channels_last
  first (faster kernels; the output comes back NCHW; 1-D maps train lifted through the engine,
  `lifted.py`; 3-D maps train as given, see
  `_converts_to_channels_last`). In memory-efficient mode the Function also
  takes the layer's first conv and recomputes only the concatenation and BN-ReLU in backward,
  and a BN-ReLU-conv tail after it runs as a second Function that keeps only its input;
- the plain path (any other layer, eval mode, no autograd, tracing and `torch.compile`, or
  `DENSEDSL_TRAINING_PATH=plain`): every layer concatenates its inputs with `torch.cat`
  (torchvision); memory-efficient mode recomputes each layer's concatenation, BN, ReLU and
  dropout in backward via non-reentrant checkpointing that keeps the conv outputs (under
  torch.compile too, where AOT autograd's partitioner recomputes the region; not in a graph that
  torch.jit or torch.export records: `exporting()`).
Fast inference is an opt-in pass, `engine.accelerate`, that `compile` applies by default, for maps
of every rank (under torch.compile it runs eagerly, behind one graph break).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol, Sequence, ValuesView, assert_never, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ..ir import lowering, ops
from ..language import network as n
from . import shared

# What a recomputed dense layer keeps (Pleiss et al.): its convs' outputs, or an MLP's linear
# layers' (F.linear is addmm with a bias, mm without); ops.Linear.saves_recomputed says the same
_CONVOLUTION_OPS = (torch.ops.aten.convolution.default, torch.ops.aten.addmm.default, torch.ops.aten.mm.default)
_BatchNorm = nn.modules.batchnorm._BatchNorm
# Only the channel counts of a standalone layer or transition matter for its modules.
_ANY_SIZE = 64


class _Engine(Protocol):
    """What the modules call of `engine.InferenceEngine` (which imports this module, not back)."""

    def applies(self, module: nn.Module, x: Tensor) -> bool: ...
    def block(self, block: DenseBlock, x: Tensor) -> Tensor: ...
    def features(self, model: DenseNet, x: Tensor) -> Tensor: ...
    def features_only(self, model: DenseNetFeatures, x: Tensor) -> dict[str, Tensor]: ...
    def lifts(self, module: DenseNet | DenseNetFeatures, x: Tensor) -> bool: ...
    def train_features(self, model: DenseNet, x: Tensor) -> Tensor: ...
    def train_features_only(self, model: DenseNetFeatures, x: Tensor) -> dict[str, Tensor]: ...
    def clear(self) -> None: ...


def compiling() -> bool:
    """True while a tracer or compiler records the forward: it must see plain tensor code."""
    return (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting())


def exporting() -> bool:
    """True while torch.jit scripts or traces, or torch.export records, the forward: their graphs
    hold no checkpoint, so efficient mode's recomputation is off there. torch.compile is not in
    this list: dynamo traces the non-reentrant checkpoint (a tagged region that AOT autograd's
    partitioner recomputes in backward), so a compiled efficient model keeps its memory saving."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_exporting()


def plain_training() -> bool:
    """DENSEDSL_TRAINING_PATH=plain: train through torch.cat, as torchvision does (debugging, and the
    reference the gradient tests compare the shared-storage path with)."""
    return os.environ.get("DENSEDSL_TRAINING_PATH", "") == "plain"


def _autocasting(x: Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type autocast does not know (meta): never autocast
        return False


def _add(parent: nn.Module, op_list: Sequence[ops.Op], dd: dict) -> None:
    """Register each op's module under the op's name, in execution order."""
    for op in op_list:
        parent.add_module(op.name, ops.module(op, dd))


def _reduction(op_list: Sequence[ops.Op], before: tuple[int, ...] = ()) -> tuple[int, ...]:
    """How much the ops' windows (after `before`) shrink the map along each axis: the product of
    their strides per axis (`stride=1x2` differs between axes; feature_info states the largest)."""
    r = before
    for op in op_list:
        window = op.spec.window(op.attributes())
        if window is not None:
            steps = ops.per_axis(window[1], ops.rank(op.in_shape))
            r = tuple(a * b for a, b in zip(r, steps)) if r else steps
    return r


# --- dense layers and blocks --------------------------------------------------------------------

class DenseLayer(nn.Module):
    """One H_ℓ: (BN-ReLU-Conv1x1 to bottleneck·k, drop) then BN-ReLU-Conv3x3 to k (drop).

    Children are registered in execution order, so `print(model)` reads like the data flow: pre-
    activation `norm1 relu1 conv1 [drop1] norm2 relu2 conv2 [drop2]`, post-activation `conv1 norm1
    relu1 [drop1] conv2 norm2 relu2 [drop2]`; without a bottleneck only the `…1` unit exists (a
    3x3 conv straight to k). `ops` (the lowered layer) overrides the recipe arguments.
    """

    def __init__(self, in_channels: int, growth: int, *, bottleneck: int | None = None,
                 dropout: float = 0.0, bias: bool = False, order: n.Order = "pre",
                 memory_efficient: bool = False, rank: int = 2, ops: Sequence[ops.Op] | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        if ops is None:
            recipe = n.DenseBlock(index=1, layers=1, growth=growth, bottleneck=bottleneck,
                                  dropout=dropout, bias=bias, order=order)
            ops = lowering.layer_ops(recipe, (in_channels,) + (_ANY_SIZE,) * rank, None)
        self.memory_efficient = memory_efficient
        self.in_channels = in_channels
        self.growth = growth
        _add(self, ops, {"device": device, "dtype": dtype})
        self._recomputing = False

    def _layer(self, *inputs: Tensor) -> Tensor:
        x = torch.cat(inputs, 1) if len(inputs) > 1 else inputs[0]
        return _run(self.children(), x, self._recomputing)

    def entry(self) -> shared.Entry | None:
        """The BN-ReLU-conv start that the shared-storage Function runs for this layer, if any."""
        entry = shared.entry_of(list(self.children()))
        return entry if entry is not None and entry.norm.training else None

    def rest(self, y: Tensor, efficient: bool, holder: shared.Buffer | None = None) -> Tensor:
        """The layer after its entry (`lowering.SHARED_ENTRY`): after BN-ReLU, or after
        BN-ReLU-conv in efficient mode, where the Function runs the conv too and a BN-ReLU-conv
        tail runs as a second one (`shared.tail_of`) that keeps only its input."""
        rest = list(self.children())[len(lowering.SHARED_ENTRY) - (0 if efficient else 1):]
        tail = shared.tail_of(rest) if efficient and holder is not None else None
        if tail is not None:
            return shared.norm_relu_conv(y, tail, cast(shared.Buffer, holder))
        for m in rest:
            y = m(y)
        return y

    def _checkpoint_contexts(self):
        return _checkpoint_contexts(self)

    def forward(self, features: list[Tensor]) -> Tensor:
        if (self.memory_efficient and torch.is_grad_enabled() and not exporting()
                and any(t.requires_grad for t in features)):
            # The whole layer is one checkpointed region that keeps only its conv outputs: the
            # bottleneck's 4k channels and the k new ones. The concatenation, every BN and ReLU
            # output and the dropout masks (same RNG state) are recomputed in backward.
            # Under torch.compile the region is traced once and AOT autograd's partitioner
            # recomputes its functional graph (running statistics are written once, after the
            # forward), so the policy alone is given: dynamo takes a plain function, not a method.
            contexts = _keep_convolutions if torch.compiler.is_compiling() else self._checkpoint_contexts
            return checkpoint(self._layer, *features, use_reentrant=False, context_fn=contexts)
        return self._layer(*features)


def _run(modules, x: Tensor, recomputing: bool) -> Tensor:
    """Run `modules` in order; in a checkpoint's recomputation a training BN runs with momentum 0."""
    for m in modules:
        if recomputing and isinstance(m, _BatchNorm) and m.training:
            # Recomputation in backward: same batch statistics, but the running statistics
            # were already updated by the forward pass and must not move twice (momentum 0
            # leaves them as they are and keeps the op, hence the saved tensors, the same).
            x = F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, True, 0.0, m.eps)
        else:
            x = m(x)
    return x


def _recomputes(efficient: bool, x: Tensor, modules) -> bool:
    """Whether a stem or transition runs as a checkpointed region: efficient mode, autograd on,
    no graph recorder, something in it to differentiate (the network input never requires grad,
    the stem's weights do), and a norm to recompute (a stem of one conv would only keep its
    output longer: `analysis.memory._stage_region` states the same rule)."""
    modules = list(modules)
    return (efficient and torch.is_grad_enabled() and not exporting()
            and any(isinstance(m, (_BatchNorm, nn.GroupNorm)) for m in modules)
            and (x.requires_grad or any(p.requires_grad for m in modules for p in m.parameters())))


def _checkpointed(owner, fn, x: Tensor) -> Tensor:
    """`fn(x)` as one non-reentrant checkpointed region that keeps its conv outputs (and the
    input, which the first conv keeps anyway), as a dense layer does; `owner._recomputing` marks
    the recomputation so BN's running statistics move once."""
    contexts = _keep_convolutions if torch.compiler.is_compiling() else (lambda: _checkpoint_contexts(owner))
    return checkpoint(fn, x, use_reentrant=False, context_fn=contexts)


def _checkpoint_contexts(owner):
    forward_ctx, recompute_ctx = _keep_convolutions()
    return forward_ctx, _Recomputing(owner, recompute_ctx)


def _keep_convolutions():
    """Selective-checkpoint contexts that keep the conv outputs (they are needed anyway as the next
    op's input) and recompute the concatenation and the BN-ReLU around them: Pleiss et al.'s
    shared-storage scheme."""
    return create_selective_checkpoint_contexts(
        lambda ctx, op, *args, **kwargs: CheckpointPolicy.MUST_SAVE if op in _CONVOLUTION_OPS
        else CheckpointPolicy.PREFER_RECOMPUTE)


class _Recomputing:
    """The recompute-side checkpoint context: marks the layer, then enters torch's SAC context."""

    def __init__(self, layer: Any, inner) -> None:
        self.layer, self.inner = layer, inner

    def __enter__(self):
        self.layer._recomputing = True
        return self.inner.__enter__()

    def __exit__(self, *exc):
        self.layer._recomputing = False
        return self.inner.__exit__(*exc)


def _all_ops(lowered: Sequence[lowering.Lowered]):
    for stage in lowered:
        if isinstance(stage, lowering.LoweredBlock):
            yield from (op for layer in stage.layers for op in layer)
        else:
            yield from stage.ops


def run_block(layers, x, reads=None, emits=None):
    """A dense block's loop, written once: the model runs it and the `.py` export copies its
    source. Layer j gets the outputs its row of `reads` names (indexes into x0 … x(j-1), in
    order; None: all of them, DenseNet's), and the block concatenates the outputs `emits` names
    (None: all). pytorchcv's HarDNet gathers its `links_list` the same way."""
    features = [x]
    for j, layer in enumerate(layers):
        features.append(layer(features if reads is None else [features[i] for i in reads[j]]))
    emitted = features if emits is None else [features[i] for i in emits]
    return emitted[0] if len(emitted) == 1 else torch.cat(emitted, 1)


class DenseBlock(nn.ModuleDict):
    """`denselayer1 … denselayerL`; outputs the concatenation x0 … xL (in + L·growth channels).

    `lowered` (a `lowering.LoweredBlock`) overrides the recipe arguments.
    """

    _version = 2  # torchvision's: keys without the legacy 'norm.1' dots
    shared_storage = True  # the shared-buffer training path where it applies (set False: plain)

    if TYPE_CHECKING:  # its children are the layers
        def values(self) -> ValuesView[DenseLayer]: ...

    def __init__(self, in_channels: int, layers: int, growth: int, *, memory_efficient: bool = False,
                 rank: int = 2, lowered: lowering.LoweredBlock | None = None, device=None, dtype=None,
                 **recipe) -> None:
        super().__init__()
        if lowered is None:
            lowered = lowering.lower_block(n.DenseBlock(index=1, layers=layers, growth=growth, **recipe),
                                        (in_channels,) + (_ANY_SIZE,) * rank)
        self.in_channels = in_channels
        self.growth = growth
        self.out_channels = lowered.out_shape[0]
        self.table = lowered.table  # who each layer reads and what the block emits
        self.shares_buffer = lowered.shared  # the lowering's one rule (`LoweredBlock.shared`)
        self.engine: _Engine | None = None  # engine.accelerate sets it
        for i, layer_ops in enumerate(lowered.layers, start=1):
            self.add_module(f"denselayer{i}", DenseLayer(
                layer_ops[0].in_shape[0], growth, memory_efficient=memory_efficient, ops=layer_ops,
                device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        if self.engine is not None and self.engine.applies(self, x):
            return self.engine.block(self, x)
        entries = self._shared_entries(x)
        if entries is not None:
            return self._shared_forward(x, entries)
        if self.table.dense:
            return run_block(self.values(), x)
        return run_block(self.values(), x, self.table.reads, self.table.emits)

    def _shared_entries(self, x: Tensor) -> list[shared.Entry] | None:
        """Each layer's entry when the whole block can train through the shared buffer, else None
        (always None while a tracer or compiler records the forward)."""
        return None if compiling() else self._shareable_entries(x)

    def _shareable_entries(self, x: Tensor) -> list[shared.Entry] | None:
        """`_shared_entries` less its `compiling()` test (bench_dynamo traces the Function with it)."""
        if not (self.shared_storage and self.shares_buffer and self.training and torch.is_grad_enabled()
                and not plain_training()):
            return None
        if _autocasting(x):  # the Function's aten calls skip autocast's casts
            return None
        if x.numel() // x.shape[1] <= 1:  # one value per channel: nn.BatchNorm's error, on the plain path
            return None
        entries = [layer.entry() for layer in self.values()]
        if any(e is None for e in entries):
            return None
        if not (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return None
        return cast(list[shared.Entry], entries)  # no None: returned above

    def _shared_forward(self, x: Tensor, entries: list[shared.Entry]) -> Tensor:
        holder = shared.Buffer(x, self.out_channels)
        buffer, new, offset = holder.tensor, x, 0
        for layer, entry in zip(self.values(), entries):
            buffer, y = shared.write_enter(buffer, new, holder, offset, layer.in_channels, entry,
                                           layer.memory_efficient)
            offset += new.shape[1]
            new = layer.rest(y, layer.memory_efficient, holder)
        buffer, _ = shared.write_enter(buffer, new, holder, offset, self.out_channels, None, False)
        holder.version = buffer._version
        return buffer


class Transition(nn.Sequential):
    """BN-ReLU-Conv1x1-(Dropout)-Pool between two dense blocks; `ops` overrides the recipe.

    In memory-efficient training it is one checkpointed region that keeps its input (the block's
    output, kept anyway) and its conv output; BN-ReLU (and dropout) are recomputed in backward.
    """

    if TYPE_CHECKING:  # children added by _add from the lowered ops; no pool with pool=none
        norm: nn.Module
        conv: nn.Module
        pool: nn.Module

    def __init__(self, in_channels: int, out_channels: int, *, bias: bool = False, dropout: float = 0.0,
                 pool: n.Pool = n.Pool(), rank: int = 2, ops: Sequence[ops.Op] | None = None,
                 memory_efficient: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        if ops is None:
            recipe = n.Transition(index=1, channels=out_channels, bias=bias, dropout=dropout, pool=pool)
            ops = lowering.transition_ops(recipe, (in_channels,) + (_ANY_SIZE,) * rank, None)
        _add(self, ops, {"device": device, "dtype": dtype})
        self.memory_efficient = memory_efficient
        self._recomputing = False

    def _run(self, x: Tensor) -> Tensor:
        return _run(self.children(), x, self._recomputing)

    def forward(self, x: Tensor) -> Tensor:
        if _recomputes(self.memory_efficient, x, self.children()):
            return _checkpointed(self, self._run, x)
        return self._run(x)


class _Features(nn.Sequential):
    """`features`: in memory-efficient training the stem's first `stem_length` modules run as one
    checkpointed region that keeps its conv outputs (at full resolution, in 3-D the largest maps:
    BN, ReLU and max-pool indices are recomputed in backward instead)."""

    stem_length = 0
    memory_efficient = False
    _recomputing = False

    def _stem(self, x: Tensor) -> Tensor:
        return _run(list(self)[:self.stem_length], x, self._recomputing)

    def forward(self, x: Tensor) -> Tensor:
        modules = list(self)
        if self.stem_length and _recomputes(self.memory_efficient, x, modules[:self.stem_length]):
            x = _checkpointed(self, self._stem, x)
            modules = modules[self.stem_length:]
        for m in modules:
            x = m(x)
        return x


# --- the network --------------------------------------------------------------------------------

def _materialise(model: nn.Module, device: torch.device) -> None:
    """Give every meta parameter and buffer of `model` uninitialised storage on `device` (same
    shape, dtype and requires_grad). `Module.to_empty` does the same through `empty_like` of a
    meta tensor, which torch runs as Python reference code: for the 1,591 tensors of a
    DenseNet-264 about 55 ms, and 0.5 s the first time in a process (torch imports that code),
    against 15 ms here."""
    for m in model.modules():
        params, buffers = m._parameters, m._buffers
        for name, p in params.items():
            if p is not None:
                params[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device), p.requires_grad)
        for name, b in buffers.items():
            if b is not None:
                buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)


def init_weights(model: nn.Module) -> None:
    """Set every parameter and buffer of `model`, each once: torchvision's "Official init from
    torch repo" (kaiming_normal_ conv weights, BN weight 1 and bias 0, Linear weights as torch
    makes them, zero Linear biases), zero conv biases, and any other module with parameters or
    buffers by its own `reset_parameters()` (a norm's running statistics too: BatchNorm's sets
    torchvision's 1 and 0 itself). `DenseNet` builds its modules on the meta device and runs this
    on uninitialised storage (`_materialise`), so torch's own constructor fill (kaiming_uniform_,
    overwritten here anyway) never runs; hence a module with state and no known initialiser is an
    error, never garbage.

    Self-contained on purpose: `densedsl compile -o model.py` embeds this function's source.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            m.reset_parameters()  # torch's kaiming_uniform_ weight, which torchvision keeps
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif not any(t is not None for t in (*m._parameters.values(), *m._buffers.values())):
            continue  # containers and stateless ops (ReLU, pools, dropout)
        elif hasattr(m, "reset_parameters"):
            # norms: weight 1, bias 0, running mean 0, var 1, count 0. The ignore: torch types an
            # unknown Module attribute Tensor | Module, and hasattr found a method
            m.reset_parameters()  # type: ignore[operator]
        else:
            raise TypeError(f"densedsl cannot initialise {type(m).__name__}: it has parameters or "
                            "buffers and no reset_parameters()")


class DenseNet(nn.Module):
    """A compiled `Network`: `features` (nn.Sequential) then, with a head, `classifier` (Linear).

    `forward_features(x)` returns the final feature map after the head's norm and ReLU (timm's
    `forward_features`, whose `norm5` is a fused BN-ReLU); `forward_head(x, pre_logits)` pools,
    flattens, drops and classifies; `forward(x)` is both. Without a head, `forward` returns the
    last feature map. `lowered` is `lowering.lower(network)` (the analysis holds it); by default
    the network is lowered here. The modules are made on the meta device, then every tensor is
    allocated on `device` (default: torch's default device) and filled once by `init_weights`;
    with `device="meta"` nothing is allocated.
    """

    if TYPE_CHECKING:  # added by _head, only when the network has a head (has_head)
        classifier: nn.Module

    def __init__(self, network: n.Network, *, memory: str = "standard",
                 lowered: Sequence[lowering.Lowered] | None = None, device=None, dtype=None) -> None:
        super().__init__()
        if memory not in ("standard", "efficient"):
            raise ValueError(f"memory must be 'standard' or 'efficient', not {memory!r}")
        # Shapes only, on the meta device: torch's constructors would fill every conv weight
        # (kaiming_uniform_) that init_weights then overwrites; below, each tensor is allocated
        # on the real device and filled once.
        target = torch.get_default_device() if device is None else torch.device(device)
        dd = {"device": "meta", "dtype": dtype}
        self.network_name = network.name
        self.input_shape = network.input
        self.features = _Features()
        self.features.memory_efficient = memory == "efficient"
        self.final_act = nn.Sequential()   # the head's ReLU after norm5 (timm: part of features)
        self.pre_logits = nn.Sequential()  # the head's pool, flatten and dropout
        self.feature_info: list[dict] = []
        self.engine: _Engine | None = None  # engine.accelerate sets it
        self.lowered = tuple(lowering.lower(network) if lowered is None else lowered)  # what it is built from
        # convert rank-2 NCHW input in CPU training (see forward_features), except with group
        # norms: torch 2.13's CPU GroupNorm backward on channels_last maps fed by a conv crashes
        # the process (a segmentation fault; tests/test_connectivity.py's random tables found it)
        self.train_channels_last = not any(op.kind == "groupnorm" for op in _all_ops(self.lowered))
        self.stem_length = 0
        self.stem_tap: int | None = None  # index in `features` of the stem's feature tap
        self.num_features = network.input[0]
        reduction: tuple[int, ...] = ()  # per axis; () until a window strides
        for stage in self.lowered:
            match stage:
                case lowering.LoweredStem():
                    _add(self.features, stage.ops, dd)
                    self.stem_length = self.features.stem_length = len(stage.ops)
                    self.stem_tap = stage.tap
                    if stage.tap is not None:  # timm's first entry: the stem before its pool
                        tapped = stage.ops[:stage.tap + 1]
                        self.feature_info.append({"num_chs": tapped[-1].out_shape[0],
                                                  "reduction": max(_reduction(tapped), default=1),
                                                  "module": f"features.{tapped[-1].name}"})
                    reduction = _reduction(stage.ops, reduction)
                    if stage.ops:
                        self.num_features = stage.ops[-1].out_shape[0]
                case lowering.LoweredBlock():
                    block = DenseBlock(stage.in_shape[0], stage.source.layers, stage.source.growth,
                                       memory_efficient=memory == "efficient", lowered=stage, **dd)
                    self.features.add_module(stage.name, block)
                    self.num_features = block.out_channels
                    self.feature_info.append({"num_chs": block.out_channels, "reduction": max(reduction, default=1),
                                              "module": f"features.{stage.name}"})
                case lowering.LoweredTransition():
                    self.features.add_module(stage.name, Transition(
                        stage.ops[0].in_shape[0], stage.ops[-1].out_shape[0], ops=stage.ops,
                        memory_efficient=memory == "efficient", **dd))
                    self.num_features = stage.ops[-1].out_shape[0]
                    reduction = _reduction(stage.ops, reduction)
                case lowering.LoweredHead():
                    self._head(stage.ops, dd)
                case _:
                    assert_never(stage)
        if not self.has_head:
            self.num_classes = 0
            self.head_hidden_size = self.num_features
        if target.type != "meta":  # on meta there is nothing to fill (and meta normal_ is slow)
            _materialise(self, target)
            init_weights(self)

    def _head(self, head: Sequence[ops.Op], dd: dict) -> None:
        """Leading pointwise ops (norm, ReLU) end the features; the rest make the logits. Ops
        with weights go where their module path says (`features.norm5`, `classifier`)."""
        pointwise = True
        for op in head:
            pointwise = pointwise and op.spec.pointwise
            module = ops.module(op, dd)
            if op.module is not None:
                parent, _, name = op.module.rpartition(".")
                (self.get_submodule(parent) if parent else self).add_module(name, module)
            else:
                (self.final_act if pointwise else self.pre_logits).add_module(op.name, module)
        linear = head[-1]
        self.head_hidden_size = linear.in_shape[0]
        self.num_classes = linear.out_shape[0]

    # timm's interface ---------------------------------------------------------------------------

    @property
    def has_head(self) -> bool:
        return hasattr(self, "classifier")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Switch memory-efficient recomputation on or off for every dense layer, the stem and
        the transitions."""
        for m in self.modules():
            if isinstance(m, (DenseLayer, Transition, _Features)):
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
        dd: dict[str, Any] = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        self.classifier = nn.Linear(self.head_hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()
        if isinstance(self.classifier, nn.Linear):
            nn.init.constant_(self.classifier.bias, 0)

    def train(self, mode: bool = True) -> "DenseNet":
        if self.engine is not None:
            self.engine.clear()
        return super().train(mode)

    # forward ------------------------------------------------------------------------------------

    def _converts_to_channels_last(self, x: Tensor) -> bool:
        # CPU convolutions and BN train faster on channels_last maps (measured in
        # bench/bench_train.py); CUDA training is already channels_last (train.py). Rank 2 only:
        # a 3-D step gained nothing from channels_last_3d (DenseNet-121 3-D, batch 2, 1x64^3,
        # one SGD step, 2 threads, interleaved rounds, fastest of 9 / 11: 515 / 463 ms against
        # 488 / 498 ms NCDHW, MONAI 490 / 471 ms): CPU avg_pool3d gives NCDHW back, so every
        # block after the first runs NCDHW anyway, and the conversions cost what block 1 gains.
        return (self.train_channels_last and self.training and torch.is_grad_enabled()
                and x.dim() == 4 and x.device.type == "cpu" and x.is_contiguous()
                and not x.is_contiguous(memory_format=torch.channels_last)
                and not compiling() and not plain_training())

    def forward_features(self, x: Tensor) -> Tensor:
        if self.engine is not None and self.engine.applies(self, x):
            return self.final_act(self.engine.features(self, x))
        if self.engine is not None and self.engine.lifts(self, x):  # 1-D training (lifted.py)
            return self.final_act(self.engine.train_features(self, x))
        converted = self._converts_to_channels_last(x)
        if converted:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.final_act(self.features(x))
        return x.contiguous() if converted and x.dim() == 4 else x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.pre_logits(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        return self.forward_head(x) if self.has_head else x


class DenseNetFeatures(nn.Module):
    """timm's `features_only`: `forward` returns {'stem': the stem before its pool (when the
    stem has a tap, see `lowering.LoweredStem.tap`), 'denseblock{i}': output of dense block i}."""

    def __init__(self, model: DenseNet) -> None:
        super().__init__()
        self.features = model.features
        self.feature_info = model.feature_info
        self.stem_length = model.stem_length
        self.stem_tap = model.stem_tap
        self.engine = model.engine
        self.last = max((i for i, m in enumerate(self.features) if isinstance(m, DenseBlock)),
                        default=-1 if self.stem_tap is None else self.stem_tap)  # the last tap

    def train(self, mode: bool = True) -> "DenseNetFeatures":
        if self.engine is not None:
            self.engine.clear()
        return super().train(mode)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.engine is not None and self.engine.applies(self, x):
            return self.engine.features_only(self, x)
        if self.engine is not None and self.engine.lifts(self, x):  # 1-D training (lifted.py)
            return self.engine.train_features_only(self, x)
        out: dict[str, Tensor] = {}
        for i, (name, m) in enumerate(self.features.named_children()):
            if i > self.last:
                break
            x = m(x)
            if i == self.stem_tap:
                out["stem"] = x
            elif isinstance(m, DenseBlock):
                out[name] = x
        return out


__all__ = ["DenseBlock", "DenseLayer", "DenseNet", "DenseNetFeatures", "Transition", "init_weights"]
