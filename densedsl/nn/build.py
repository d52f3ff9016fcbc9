"""Network → torch.nn.Module.

`build_model` runs the graph checks first (`analysis.analyze` raises SpecError on any error), so
a model is never built from a network densedsl rejects; the module classes live in `modules.py`,
the `.pt`/`.py`/`.onnx` writers in `export.py` and loading weights into a model in `weights.py`.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Any

import torch
from torch import nn

from ..language.network import Network
from .engine import accelerate
from .model import DenseNet, DenseNetFeatures

MEMORY_MODES = ("standard", "efficient")


def build_model(network: Network, *, memory: str = "standard", features_only: bool = False,
                device: Any = None, dtype: torch.dtype | None = None, engine: bool = True,
                memory_limit: float | str | None = None) -> nn.Module:
    """Check `network` and build its model: a `DenseNet`, or with `features_only=True` a module whose
    forward returns {'stem': the stem before its pool, 'denseblock{i}': block output} (timm's
    features_only, in `feature_info`'s order; no 'stem' without a stem tap).

    memory: "standard" keeps every concatenation for backward (fastest); "efficient" keeps each
    layer's conv outputs and recomputes its concatenation, BN and ReLU in backward (memory
    linear in depth; also switchable later with `model.set_grad_checkpointing()`). device/dtype
    place the parameters at construction, as timm's `dd` does. The model is built from the
    analysis' lowered op list; `engine=True` applies the inference engine (`engine.accelerate`).

    Before allocating, the weights the analysis predicts are checked against the memory this
    process can use (SpecError E307, see `densedsl.analysis.budget`): `memory_limit` (bytes, or a size
    such as "16GiB") replaces that figure, math.inf (or "none") turns the check off; the
    environment variable DENSEDSL_MEMORY_LIMIT does the same for every call.
    """
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {', '.join(MEMORY_MODES)}, not {memory!r}")
    from ..analysis import budget
    from ..analysis.figures import analyze
    with _collector_paused():
        analysis = analyze(network)
        budget.require(budget.for_model(analysis), network, within=budget.limit(memory_limit, device=device),
                       library=True)
        model = DenseNet(network, memory=memory, lowered=analysis.lowered, device=device, dtype=dtype)
    if engine:
        accelerate(model)
    return DenseNetFeatures(model) if features_only else model


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off while the analysis and the modules are made (and
    back as it was, whatever happens): they allocate tens of thousands of objects that all stay
    alive, and each full pass the collector makes meanwhile walks the whole analysis graph and
    every module made so far (tens of ms for DenseNet-264, bench/bench_construct.py)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


__all__ = ["MEMORY_MODES", "build_model"]
