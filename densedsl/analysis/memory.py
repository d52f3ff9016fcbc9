"""What a network's activations cost: the memory model behind `Analysis.memory`.

    model(graph, "efficient", shared_blocks).bytes(batch=8, dtype="float32")

One walk per mode over the architecture graph, each stating what the compiled model keeps:
training counts the tensors autograd saves (the op table says what each kind saves; efficient
mode's recomputed regions are the ones `nn/model.py` and `nn/shared.py` checkpoint), inference
the peak of live tensors in graph order, with a batch norm after a conv folded into it as the
inference engine runs it. `Analysis.memory` adds parameters, buffers and gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import lowering
from ..ir.ops import kind_of, numel
from . import graph as graph_

Graph = graph_.ArchGraph  # an ArchGraph, or a networkx DiGraph (tests)


@dataclass(frozen=True, slots=True)
class MemoryModel:
    """Bytes = batch·((elements + transient)·dtype_bytes + mask_bytes) + fixed_bytes, per mode."""

    elements: int                   # activation elements stored in the model's dtype
    mask_bytes: int                 # dropout masks (bool) and max-pool indices (int64)
    fixed_bytes: int                # BN's per-channel saved statistics (float32, batch-free)
    transient: int = 0              # elements efficient mode's backward adds at its peak: a
                                    # region's recomputation and the gradients beside it

    def bytes(self, batch: int, dtype: str, *, kept: bool = False) -> int:
        """The peak; `kept`: only what the forward leaves for backward."""
        elements = self.elements + (0 if kept else self.transient)
        return batch * (elements * lowering.dtype_bytes(dtype) + self.mask_bytes) + self.fixed_bytes


# --- the walks ------------------------------------------------------------------------------------

def _storages(g: Graph, *, training: bool, efficient: bool = False,
              blocks: dict[str, dict[str, list[str]]] | None = None) -> dict[str, str]:
    """Which allocation holds each node's output, as the op table states each kind's storage:
    a ReLU runs in place where the lowering allowed it (`lowering.in_place_where_safe`, the one
    rule the model and the engine follow too), flatten is a view, feature nodes and the output
    name tensors made elsewhere, and dropout is the identity outside training, where a batch norm
    right after a conv is folded into it (the inference engine's `_Folded`): one tensor."""
    storage: dict[str, str] = {}
    # In standard mode the shared-buffer path keeps what the plain one keeps (each layer's staged
    # concatenation and BN-ReLU output), so only efficient mode's model reads the features as
    # slices of the block's buffer
    shared = _shared_features(g, blocks) if training and efficient and blocks else {}
    for n, a in g.nodes(data=True):
        if n in shared:  # copied into its block's buffer, the block's output
            storage[n] = shared[n]
            continue
        rule = kind_of(a["kind"]).storage_of(a)
        preds = g.pred[n]
        alias = rule in ("view", "in_place") or (rule == "identity_in_eval" and not training) or (
            not training and a["kind"] == "norm" and a["buffers"] > 0 and len(preds) == 1
            and g.nodes[p := next(iter(preds))]["kind"] == "conv" and len(g.succ[p]) == 1)
        storage[n] = storage[next(iter(preds))] if alias and preds else n
    return storage


def _layer_of(node: str) -> str | None:
    """`denseblock2.denselayer5` for any op of that layer, else None."""
    parts = node.split(".")
    return ".".join(parts[:2]) if len(parts) == 3 and parts[1].startswith("denselayer") else None


def _entry(g: Graph, concat: str) -> list[str]:
    """A layer's concat and the ops the shared-storage Function runs after it
    (`lowering.SHARED_ENTRY`): the nodes one shared-buffer layer's entry covers."""
    chain = [concat]
    for _ in lowering.SHARED_ENTRY:
        chain.append(next(iter(g.succ[chain[-1]])))
    return chain


def _tail(g: Graph, entry_conv: str) -> list[str]:
    """The ops after a shared layer's entry conv when they are exactly `lowering.RECOMPUTED_TAIL`
    and end the layer (the next node is its feature): efficient mode's second Function
    (`shared.tail_of`), which keeps only its input. Else []."""
    chain, n = [], entry_conv
    for kind in lowering.RECOMPUTED_TAIL:
        succ = list(g.succ[n])
        if len(succ) != 1 or g.nodes[succ[0]]["kind"] != kind or _layer_of(succ[0]) != _layer_of(entry_conv):
            return []
        n = succ[0]
        chain.append(n)
    succ = list(g.succ[n])
    return chain if len(succ) == 1 and _layer_of(succ[0]) is None else []


def _shared_blocks(g: Graph, shared: frozenset[str]) -> dict[str, dict[str, list[str]]]:
    """The blocks the compiler trains through one shared buffer (`LoweredBlock.shared`, the one
    rule), each with its layers' entries: {block: {layer: [concat, norm, relu, conv]}}."""
    blocks: dict[str, dict[str, list[str]]] = {}
    for n, a in g.nodes(data=True):
        layer = _layer_of(n)
        if layer is not None and a["kind"] == "concat" and layer.split(".")[0] in shared:
            blocks.setdefault(layer.split(".")[0], {})[layer] = _entry(g, n)
    return blocks


def _shared_features(g: Graph, blocks: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    """Feature node → its block's output node, in shared-buffer blocks: x0 … xL live in the
    block's output from the start (the layers' own outputs are copied in and freed)."""
    out: dict[str, str] = {}
    for block in blocks:
        for v in g.pred[f"{block}.out"]:
            if g.nodes[v]["kind"] == "feature":
                out[v] = f"{block}.out"
    return out


_NORMS = ("norm", "groupnorm")  # what makes a stem or transition worth recomputing


def _stage_region(node: str) -> str | None:
    """`stem` or `transition3` for any op of the stem or a transition (the compiler checkpoints
    each whole in efficient mode: `model._Features`, `Transition`), else None."""
    stage, dot, _ = node.partition(".")
    return stage if dot and (stage == "stem" or stage.startswith("transition")) else None


def _recomputed(g: Graph, blocks: dict[str, dict[str, list[str]]]) -> dict[str, list[str]]:
    """The regions memory-efficient mode recomputes in backward, in graph order: in a shared-
    buffer block each layer's entry (concat, BN, ReLU, and the conv whose input they make: the
    Function keeps the conv's output only) and its BN-ReLU-conv tail (`_tail`); elsewhere every dense layer whole, from its concat to
    its last op (the compiler checkpoints `DenseLayer._layer`); the stem and every transition
    whole when it has a norm (`model._recomputes`: they keep their conv outputs and input)."""
    shared = {layer: entry for layers in blocks.values() for layer, entry in layers.items()}
    tails = {layer: tail for layer in shared if (tail := _tail(g, shared[layer][-1]))}
    regions: dict[str, list[str]] = {}
    for n in g.nodes:
        layer = _layer_of(n)
        if layer is not None and (layer not in shared or n in shared[layer]):
            regions.setdefault(layer, []).append(n)
        elif layer is not None and n in tails.get(layer, ()):
            regions.setdefault(f"{layer}:tail", []).append(n)
        elif (stage := _stage_region(n)) is not None:
            regions.setdefault(stage, []).append(n)
    return {name: nodes for name, nodes in regions.items()  # a stage without a norm: not replayed
            if _layer_of(nodes[0]) is not None or any(g.nodes[n]["kind"] in _NORMS for n in nodes)}


def _region_inputs(g: Graph, regions: dict[str, list[str]], storage: dict[str, str],
                   recorded: set[str]) -> set[str]:
    """Storages a recomputed region keeps to replay itself: what its recorded ops read from
    outside it (a dense layer's concat saves these anyway; a stem keeps the network input, a
    transition its block's output)."""
    kept: set[str] = set()
    for nodes in regions.values():
        inside = set(nodes)
        for n in nodes:
            if n in recorded:
                kept.update(storage[p] for p in g.pred[n] if p not in inside)
    return kept


def model(g: Graph, mode: str, shared: frozenset[str]) -> MemoryModel:
    if mode == "inference":
        return _inference_memory(g)
    return _training_memory(g, efficient=mode == "efficient", shared=shared)


def _training_memory(g: Graph, *, efficient: bool, shared: frozenset[str]) -> MemoryModel:
    """What autograd keeps for backward: each op's saved tensors, distinct storages counted once.

    The op table says what each kind saves (conv, BN, pooling and linear their input; ReLU its
    output; dropout its mask; max pooling its indices; BN its per-channel statistics). In
    efficient mode a dense layer, the stem and each transition keep only their inputs (the
    block's feature maps; the network input; the block's output) and their conv outputs; their
    concat, BN, ReLU and pool outputs, max-pool indices and dropout masks are recomputed, so
    backward needs the largest region's recomputed tensors once more, at a time.
    """
    blocks = _shared_blocks(g, shared) if efficient else {}  # found once, read by both walks below
    storage = _storages(g, training=True, efficient=efficient, blocks=blocks)
    regions = _recomputed(g, blocks) if efficient else {}
    region = {n for nodes in regions.values() for n in nodes}
    tail_ends = {nodes[-1] for name, nodes in regions.items() if name.endswith(":tail")}
    saved: set[str] = set()
    mask_bytes = fixed = 0
    live, tracked = _reaching_output(g), _tracked(g)
    for n, a in g.nodes(data=True):
        if n not in live or n not in tracked:
            # a layer whose output nothing reads: autograd frees what it saved at once; an op
            # before any weight (a stem opening with a pool or ReLU): autograd records nothing
            continue
        spec = kind_of(a["kind"])
        fixed += spec.fixed_bytes(a)
        # a recomputed tail's last conv: its output is copied into the block's buffer, not kept
        keeps = "nothing" if n in tail_ends else spec.saves_recomputed if n in region else spec.saves
        if keeps == "inputs":
            saved.update(storage[p] for p in g.pred[n])
        elif keeps == "input":
            saved.add(storage[next(iter(g.pred[n]))])
        elif keeps == "output":
            saved.add(storage[n])
        if n not in region:
            mask_bytes += spec.saved_bytes(a)
    if efficient:
        saved |= _region_inputs(g, regions, storage, live & tracked)
    elements = sum(numel(g.nodes[s]["out_shape"]) for s in saved)
    transient = 0
    if efficient:
        transient = max((_region_elements(g, nodes, storage, saved) for nodes in regions.values()),
                        default=0) + _backward_gradients(g, blocks)
    return MemoryModel(elements, mask_bytes, fixed, transient)


def _reaching_output(g: Graph) -> set[str]:
    """The nodes with a path to the output. With DenseNet's table that is every node; a table
    whose block emits less than it computes (`emit=[0]`, or a layer no later layer reads and the
    block does not emit) leaves dead layers, whose saved tensors backward never holds."""
    seen, stack = {"output"}, ["output"]
    while stack:
        for u in g.pred[stack.pop()]:
            if u not in seen:
                seen.add(u)
                stack.append(u)
    return seen


def _tracked(g: Graph) -> set[str]:
    """The nodes autograd records: those with weights and everything downstream of one (the
    input does not require grad, so ops before the first weight save nothing)."""
    found: set[str] = set()
    for n, a in g.nodes(data=True):  # graph order is forward order (`_forward`)
        if a.get("params") or any(p in found for p in g.pred[n]):
            found.add(n)
    return found


def _backward_gradients(g: Graph, blocks: dict[str, dict[str, list[str]]]) -> int:
    """Gradients a shared-buffer block's backward holds beside what efficient mode keeps, at its
    largest layer: the block's gradient buffer (`shared._WriteEnter`: one for every channel) and
    a layer's two fresh ones, BN backward's for the concatenation it read and the conv
    backward's for the bottleneck. With little kept, these are a fifth of the peak (3-D
    DenseNet-121, 1x64^3): standard mode's saved tensors dwarf them."""
    return max((numel(g.nodes[f"{block}.out"]["out_shape"])
                + max(numel(g.nodes[e[0]]["out_shape"]) + numel(g.nodes[e[-1]]["out_shape"])
                      for e in layers.values())
                for block, layers in blocks.items()), default=0)


def _region_elements(g: Graph, nodes: list[str], storage: dict[str, str], saved: set[str]) -> int:
    """Elements a recomputed layer allocates again when backward replays it."""
    fresh = {storage[n] for n in nodes if storage[n] == n and n not in saved}
    return sum(numel(g.nodes[s]["out_shape"]) for s in fresh)


def _inference_memory(g: Graph) -> MemoryModel:
    """Peak of live tensors in a forward pass without autograd, ops run in graph order.

    A tensor lives from the op that makes it until its last reader has run (a block's feature
    maps until the block's final concat). The input counts: it is on the device too.
    """
    storage = _storages(g, training=False)
    order = {n: i for i, n in enumerate(g.nodes)}
    last_use: dict[str, int] = {}
    for n in g.nodes:
        s = storage[n]
        end = max((order[v] for v in g.succ[n]), default=order[n])
        last_use[s] = max(last_use.get(s, 0), end)
    frees: dict[int, list[str]] = {}
    for s, i in last_use.items():
        frees.setdefault(i, []).append(s)
    live = peak = 0
    for n, a in g.nodes(data=True):
        if storage[n] == n:
            live += numel(a["out_shape"])
        peak = max(peak, live)
        for s in frees.get(order[n], ()):
            live -= numel(g.nodes[s]["out_shape"])
    # Max pooling makes no indices without autograd, and dropout is the identity: no masks.
    return MemoryModel(peak, 0, 0)


__all__ = ["MemoryModel", "model"]
