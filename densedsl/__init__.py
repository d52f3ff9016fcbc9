"""densedsl: DenseNet-family architectures as short text specs.

    spec = densedsl.load("specs/densenet121.dense")            # parse + resolve, or SpecError
    a = densedsl.analyze(spec)                                  # the graph and every figure
    print(densedsl.summary(spec, batch=64))                     # torchinfo-style table
    model = densedsl.compile(spec, memory="efficient")          # torch.nn.Module
    densedsl.render(spec, detail="layers").render("dn121")      # graphviz diagram

Every function that takes a spec accepts a `Spec`, a path to a `.dense` file, or spec text.
Spec parameters and the function's own options never share a channel by accident: parameters
go in `params={"depth": 190}` or, as a shorthand, as extra keywords (`depth=190`); options are
the function's named keywords. A spec parameter that has the name of an option of the function
called (a network parameter `memory` passed to `compile`) is ambiguous as a keyword: without
`params=` the call is refused with an error that says so, never silently taken for the option;
once `params=` is given, the keyword is the option.
torch and graphviz are imported on first use only, so `import densedsl` stays fast.
"""

import os as _os
import typing as _t

from .core.diagnostics import Diagnostic, SpecError
from .language.spec import Spec, as_spec, load_all

if _t.TYPE_CHECKING:
    import graphviz
    import torch

    from .analysis.figures import Analysis
    from .views.report import Summary

__version__ = "0.1.0"
# `compile` is left out of `__all__` so that `from densedsl import *` does not shadow the builtin.
__all__ = ["Analysis", "Diagnostic", "Spec", "SpecError", "Summary", "analyze", "load", "load_all", "load_run",
           "load_weights", "parse", "predict", "render", "summary", "__version__"]

SpecLike = _t.Union[Spec, str, "_os.PathLike[str]"]


def _spec(function: str, spec: SpecLike, network: str | None, params: _t.Mapping[str, _t.Any] | None,
          shorthand: dict[str, _t.Any], options: dict[str, _t.Any]) -> Spec:
    """The spec with its parameters bound, refusing a keyword that is both an option of
    `function` (passed here with a value other than its default) and a parameter the spec declares."""
    if params is not None and not isinstance(params, _t.Mapping):
        raise TypeError(f"params= takes a mapping of spec parameters, not {type(params).__name__}")
    both = sorted(set(shorthand) & set(params or ()))
    if both:
        raise TypeError(f"{function}() got {', '.join(both)} both in params= and as a keyword")
    merged = {**(params or {}), **shorthand}
    result = as_spec(spec, network=network, **merged)
    clash = sorted(name for name in options if name in result.declared) if params is None else []
    if clash:
        name = clash[0]
        raise TypeError(
            f"{name}= is an option of densedsl.{function}() and also a parameter of network "
            f"'{result.name}': pass spec parameters in params= (params={{'{name}': ...}}); once "
            f"params= is given, {name}= is the option")
    return result


def parse(text: str, source: str = "<string>", *, network: str | None = None,
          params: _t.Mapping[str, _t.Any] | None = None, **shorthand: _t.Any) -> Spec:
    """Parse and resolve spec text; raises SpecError listing every problem found."""
    from .language.spec import parse as _parse
    return _parse(text, source, network=network, **{**(params or {}), **shorthand})


def load(spec: SpecLike, *, network: str | None = None, params: _t.Mapping[str, _t.Any] | None = None,
         **shorthand: _t.Any) -> Spec:
    """A spec from a path to a `.dense` file, from spec text, or a `Spec` with new parameters;
    raises SpecError listing every problem found."""
    return _spec("load", spec, network, params, shorthand, {})


def analyze(spec: SpecLike, *, network: str | None = None, params: _t.Mapping[str, _t.Any] | None = None,
            max_params: float | None = None, max_memory: float | None = None,
            **shorthand: _t.Any) -> "Analysis":
    """Lower the spec to its graph and check it; raises SpecError on any error.

    `max_params` (default 10^10) and `max_memory` (bytes of training activations at batch 1,
    default 80 GiB) guard resources (E301, E302); `math.inf` lifts them."""
    from .analysis.figures import analyze as _analyze
    options = {k: v for k, v in (("max_params", max_params), ("max_memory", max_memory)) if v is not None}
    s = _spec("analyze", spec, network, params, shorthand, options)
    result = _analyze(s.network, **options)
    # see below: attached where every layer is in reach; Analysis declares no _repr_svg_ on purpose
    type(result)._repr_svg_ = _notebook_svg  # type: ignore[attr-defined]
    return result


def summary(spec: SpecLike, *, network: str | None = None, params: _t.Mapping[str, _t.Any] | None = None,
            batch: int = 1, dtype: str = "float32", layers: bool = False,
            input_shape: tuple[int, ...] | None = None, **shorthand: _t.Any) -> "Summary":
    """torchinfo's `summary()` without building a model: a printable table (`print(...)`, or
    `.as_json()`) of shapes, parameters, MACs and memory per stage (`layers=True`: per layer);
    `input_shape` (C, H, W), (C, L), (C, D, H, W) or (F,) replaces the spec's input."""
    from .analysis.figures import analyze as _analyze
    from .views.report import summary as _summary
    options = {k: v for k, v in (("batch", batch != 1), ("dtype", dtype != "float32"), ("layers", layers),
                                 ("input_shape", input_shape is not None)) if v}
    net = _spec("summary", spec, network, params, shorthand, options).network
    if input_shape is not None:
        net = net.with_input(tuple(input_shape))
    return _summary(_analyze(net), batch=batch, dtype=dtype, layers=layers)


def compile(spec: SpecLike, memory: str = "standard", *, network: str | None = None,
            params: _t.Mapping[str, _t.Any] | None = None, features_only: bool = False,
            memory_limit: float | None = None, device: "str | torch.device | None" = None,
            dtype: "torch.dtype | None" = None, **shorthand: _t.Any) -> "torch.nn.Module":
    """Build the PyTorch model; `memory` is "standard" or "efficient" (recompute in backward);
    `features_only` returns the feature maps of every stage (timm's name) instead of the head.

    A network whose weights exceed the memory this process can use is refused before anything
    is allocated (SpecError E307); `memory_limit` (bytes, math.inf for none) or the environment
    variable DENSEDSL_MEMORY_LIMIT replaces the measured figure. `device` and `dtype` place the
    parameters at construction (timm's `dd`), so a model is never built twice."""
    from .nn.build import build_model
    options = {k: v for k, v in (("memory", memory != "standard"), ("features_only", features_only),
                                 ("memory_limit", memory_limit is not None),
                                 ("device", device is not None), ("dtype", dtype is not None)) if v}
    s = _spec("compile", spec, network, params, shorthand, options)
    return build_model(s.network, memory=memory, features_only=features_only, memory_limit=memory_limit,
                       device=device, dtype=dtype)


def load_weights(model: "torch.nn.Module", weights: _t.Any, *, strict: bool = True) -> "torch.nn.Module":
    """Load a state_dict, a checkpoint or weights file, or a run directory (its best.pt, else
    checkpoint.pt); one readable error lists every mismatch."""
    from .nn.weights import load_weights as _load_weights
    return _load_weights(model, weights, strict=strict)


def load_run(path: "str | _os.PathLike[str]", *, device: str = "cpu") -> _t.Any:
    """A trained model with its preprocessing, from a run directory (its best or last weights),
    a checkpoint, or an exported .pt/.onnx: call it on a batch of raw inputs, or pass it to
    `predict`. Everything it needs travels with the file; nothing is downloaded."""
    from .training.predict import load_predictor
    return load_predictor(path, device=device)


def predict(model: _t.Any, data: "str | _t.Sequence[str]", *, top_k: int = 1) -> list[dict[str, _t.Any]]:
    """What `densedsl predict` writes, as one dict per input: `model` a run directory, a
    checkpoint, an exported .pt/.onnx or what `load_run` returned; `data` a folder or files of
    images, a CSV without the target column, or .npy arrays."""
    from .training.predict import Predictor, load_predictor
    from .training.predict import predict as _predict
    predictor = model if isinstance(model, Predictor) else load_predictor(model)
    header, rows = _predict(predictor, [data] if isinstance(data, (str, _os.PathLike)) else list(data),
                            top_k=top_k)
    return [dict(zip(header, row)) for row in rows]


def render(spec: SpecLike, detail: str = "overview", *, network: str | None = None,
           params: _t.Mapping[str, _t.Any] | None = None, expand: int | _t.Iterable[int] | None = None,
           rankdir: str = "TB") -> "graphviz.Digraph":
    """Draw the analysis graph: `detail` overview, blocks, layers or matrix (who reads whom, a
    grid per block); `expand` lists the dense
    blocks (1-based) drawn layer by layer; `rankdir` TB or LR. Spec parameters go in `params=`
    only (every other keyword here is a diagram option)."""
    # The module is `diagram`, not `render`: importing a submodule named `render` would
    # replace this function with the module on `densedsl`.
    from .views.diagram import to_digraph
    return to_digraph(analyze(spec, network=network, params=params), detail=detail, expand=expand,
                      rankdir=rankdir)


def _notebook_svg(obj: "Spec | Analysis") -> str | None:
    """Jupyter shows a spec or an analysis as its overview diagram; without Graphviz's `dot`
    there is no picture, and Jupyter falls back to the text repr instead of an error."""
    from .views.diagram import svg
    try:
        return svg(analyze(obj) if isinstance(obj, Spec) else obj)
    except SpecError:
        return None


# The picture is a view, a layer above both classes: it is attached here, where every layer is
# in reach, so that neither `language` nor `analysis` imports upward (tests/test_architecture.py).
Spec._repr_svg_ = _notebook_svg  # type: ignore[attr-defined]


def __getattr__(name: str) -> _t.Any:
    """`densedsl.Analysis` and `densedsl.Summary` without importing the analysis at start-up."""
    if name == "Analysis":
        from .analysis.figures import Analysis
        Analysis._repr_svg_ = _notebook_svg  # type: ignore[attr-defined]
        return Analysis
    if name == "Summary":
        from .views.report import Summary
        return Summary
    raise AttributeError(f"module 'densedsl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, "compile"})
