"""densedsl: DenseNet-family architectures as short text specs.

    spec = densedsl.load("specs/densenet121.dense")          # parse + resolve, or SpecError
    a = densedsl.analyze(spec)                                # the graph and every figure
    model = densedsl.compile(spec, memory="efficient")        # torch.nn.Module
    densedsl.render(spec, detail="layers").render("dn121")    # graphviz diagram

Every function that takes a spec accepts a `Spec`, a path to a `.dense` file, or spec text, plus
`network=NAME` and parameter overrides as keywords (`depth=190, growth=40`). torch and graphviz
are imported on first use only, so `import densedsl` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .diagnostics import Diagnostic, SpecError
from .spec import Spec, as_spec, load, parse

if TYPE_CHECKING:
    import graphviz
    import torch

    from .analysis import Analysis

__version__ = "0.1.0"
__all__ = ["Diagnostic", "Spec", "SpecError", "analyze", "compile", "load", "load_weights",
           "parse", "render", "__version__"]


def analyze(spec: Spec | str, *, network: str | None = None, **params: Any) -> "Analysis":
    """Lower the spec to its graph and check it; raises SpecError on any error."""
    from .analysis import analyze as _analyze
    return _analyze(as_spec(spec, network=network, **params).network)


def compile(spec: Spec | str, memory: str = "standard", *, features: bool = False,
            network: str | None = None, memory_limit: float | None = None,
            **params: Any) -> "torch.nn.Module":
    """Build the PyTorch model; `memory` is "standard" or "efficient" (recompute in backward).

    A network whose weights exceed the memory this process can use is refused before anything
    is allocated (SpecError E307); `memory_limit` (bytes, math.inf for none) or the environment
    variable DENSEDSL_MEMORY_LIMIT replaces the measured figure."""
    from .compiler import build_model
    return build_model(as_spec(spec, network=network, **params).network, memory=memory,
                       features=features, memory_limit=memory_limit)


def load_weights(model: "torch.nn.Module", weights: Any, *, strict: bool = True) -> "torch.nn.Module":
    """Load a state_dict or a checkpoint path; one readable error lists every mismatch."""
    from .weights import load_weights as _load_weights
    return _load_weights(model, weights, strict=strict)


def render(spec: Spec | str, detail: str = "overview", *, network: str | None = None,
           **options: Any) -> "graphviz.Digraph":
    """Draw the analysis graph; see `densedsl.diagram.to_digraph` for the options."""
    # The module is `diagram`, not `render`: importing a submodule named `render` would
    # replace this function with the module on `densedsl`.
    from .diagram import to_digraph
    return to_digraph(analyze(spec, network=network), detail=detail, **options)
