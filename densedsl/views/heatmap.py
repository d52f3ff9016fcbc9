"""How strongly each layer of a trained DenseNet uses each earlier feature map (the paper's Figure 5).

Huang et al. 2017, §5 "Feature Reuse": "the color of pixel (s, ℓ) encodes the average L1 norm
(normalized by number of input feature-maps) of the weights connecting convolutional layer s to
ℓ within a dense block". Layer ℓ's first conv (the 1x1 bottleneck, or the 3x3 without one) reads
the concatenation [x_0, x_1, ..., x_{ℓ−1}]; the input channels that hold x_s form one range, and
the mean |w| over that range (all output channels, all kernel positions) is the strength of the
connection s → ℓ. The layer after the block (a transition's conv, or the classifier after the
last block) reads all of x_0 ... x_L and forms the last row, as in the paper's figure.

Any connectivity table (`links=`, `emit=`, widths; ir/connectivity.py) reads the same way: layer
ℓ's first conv reads the maps of its table's reads, in their concatenation order (x7, x6, x4, x0
for a harmonic layer 8), each one range of input channels as wide as that map; the row after the
block reads the emitted maps, in emit order. A cell no layer reads stays NaN (blank).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, assert_never

from ..core.files import atomic_path
from ..ir import connectivity
from ..language.network import DenseBlock, Network, Transition

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


def connection_strength(model: "nn.Module", network: Network) -> "list[np.ndarray]":
    """One (L+1)x(L+1) float array per dense block: row t is the target (layers 1..L, then the
    layer that consumes the block's output), column s the source feature map x_s (x_0 is the
    block input, x_ℓ the output of layer ℓ). Entries without a connection (s > t for a layer)
    are NaN; the last row is NaN when nothing follows the block (or a block follows directly).
    """
    import numpy as np
    import torch

    modules = dict(model.named_modules())
    # DenseNetFeatures (`model.`) and DistributedDataParallel (`module.`) wrap the model.
    prefix = next((p for p in ("", "model.", "module.") if f"{p}features" in modules), "")
    stages = list(network.stages)
    result = []
    for pos, block in enumerate(stages):
        match block:
            case DenseBlock():
                pass
            case Transition():
                continue
            case _:
                assert_never(block)
        name = f"{prefix}features.denseblock{block.index}"
        first = "linear1" if block.kind == "linear" else "conv1"  # an MLP's layers read through a Linear
        k0 = modules[f"{name}.denselayer1.{first}"].weight.shape[1]
        L, table = block.layers, connectivity.table(block)
        matrix = np.full((L + 1, L + 1), np.nan)
        with torch.no_grad():
            for layer in range(1, L + 1):
                w = modules[f"{name}.denselayer{layer}.{first}"].weight.detach().float().abs()
                ranges = _ranges(table, k0, table.reads_of(layer))
                if w.shape[1] != ranges[-1][2]:
                    raise ValueError(f"{name}.denselayer{layer}.{first} reads {w.shape[1]} channels, not "
                                     f"{ranges[-1][2]}: the model was not built from this network")
                for s, start, stop in ranges:
                    matrix[layer - 1, s] = float(w[:, start:stop].mean())
            consumer = _consumer(modules, prefix, stages, pos, network)
            if consumer is not None:
                ranges = _ranges(table, k0, table.emits)
                # A classifier after a windowed pool reads channel-major flattened features.
                w = consumer.detach().float().abs().reshape(consumer.shape[0], ranges[-1][2], -1)
                for s, start, stop in ranges:
                    matrix[L, s] = float(w[:, start:stop].mean())
        result.append(matrix)
    return result


def _ranges(table: connectivity.Table, k0: int, maps: Sequence[int]) -> list[tuple[int, int, int]]:
    """(s, start, stop) for each map x_s of a concatenation of `maps`, in order: the input
    channels that hold x_s."""
    out, start = [], 0
    for s in maps:
        stop = start + table.channels_of(k0, s)
        out.append((s, start, stop))
        start = stop
    return out


def _consumer(modules: dict, prefix: str, stages: list, pos: int, network: Network):
    """The weight of the layer that reads the block's whole output, if there is one."""
    following = stages[pos + 1] if pos + 1 < len(stages) else None
    if isinstance(following, Transition):
        transition = f"{prefix}features.transition{following.index}"
        return modules[f"{transition}.conv" if f"{transition}.conv" in modules else f"{transition}.linear"].weight
    if following is None and network.head is not None and f"{prefix}classifier" in modules:
        return modules[f"{prefix}classifier"].weight
    return None


def write_heatmap(strengths: Sequence[Sequence[Sequence[float]]], path: str | os.PathLike, *,
                  network: Network | None = None, title: str | None = None) -> None:
    """Draw the matrices of `connection_strength` side by side (one panel per dense block), each
    scaled to its own maximum as in the paper; written atomically, format from the suffix."""
    from ..core.optional import require
    matplotlib = require("matplotlib", "drawing a heatmap")
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    blocks = len(strengths)
    fig = Figure(figsize=(4.2 * max(blocks, 1), 4.2), layout="constrained")
    axes = fig.subplots(1, max(blocks, 1), squeeze=False)[0]
    stages = list(network.stages) if network is not None else []
    block_positions = [i for i, s in enumerate(stages) if isinstance(s, DenseBlock)]
    for b, (ax, matrix) in enumerate(zip(axes, strengths)):
        size = len(matrix)
        values = [float(v) for row in matrix for v in row if not math.isnan(v)]
        top = max(values) if values and max(values) > 0 else 1.0
        scaled = [[float(v) / top for v in row] for row in matrix]
        image = ax.imshow(scaled, cmap="viridis", vmin=0, vmax=1, origin="upper", aspect="equal")
        last = "next layer"
        if b < len(block_positions):
            pos = block_positions[b]
            following = stages[pos + 1] if pos + 1 < len(stages) else None
            last = "transition" if isinstance(following, Transition) else (
                "classifier" if following is None else "next layer")
        ax.set_xticks(range(size), [str(s) for s in range(size)], fontsize=7)
        ax.set_yticks(range(size), [str(t) for t in range(1, size)] + [last], fontsize=7)
        ax.set(xlabel="source feature map x_s", ylabel="target layer ℓ", title=f"dense block {b + 1}")
        fig.colorbar(image, ax=ax, shrink=0.8, label="mean |w| (÷ block max)")
    fig.suptitle(title or "connection strength (mean absolute weight), as in Huang et al. 2017, Fig. 5")
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=(target.suffix.lstrip(".") or "png"), dpi=110)
