"""Writers for `densedsl compile -o OUT`: weights (.pt), standalone source (.py), ONNX (.onnx).

Every writer goes through `files.atomic_write`/`atomic_path`, so a failure never leaves a
partial file behind.
"""

from __future__ import annotations

import contextlib
import inspect
import keyword
import operator
import os
from pathlib import Path
from typing import Sequence, assert_never

import torch
from torch import nn

from ..core import diagnostics as d
from ..core.files import atomic_path, atomic_write, check_writable
from ..ir import lowering
from ..ir import ops as ops_
from ..language import network as n
from .model import DenseNet, init_weights, run_block

SUFFIXES = (".pt", ".py", ".onnx")


def check_output(path: str | os.PathLike) -> str:
    """The output kind ('.pt', '.py', '.onnx') of `path`, or SpecError: E907 for an extension
    densedsl cannot write, E912/E902 for an output it must not replace (a FIFO, a device)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".pth":
        suffix = ".pt"
    if suffix not in SUFFIXES:
        shown = f"'{Path(path).suffix}'" if Path(path).suffix else "no extension"
        raise d.SpecError([d.Diagnostic(
            d.BAD_OUTPUT, f"cannot write {shown}: densedsl compile writes .pt, .py or .onnx", None,
            "use .pt for weights (torch.load), .py for standalone PyTorch source, .onnx for ONNX",
            file=str(path))])
    check_writable(path)
    return suffix


def write_output(model: DenseNet, network: n.Network, path: str | os.PathLike) -> None:
    kind = check_output(path)
    if kind == ".pt":
        write_weights(model, path)
    elif kind == ".py":
        atomic_write(path, python_source(network, getattr(model, "lowered", None)))
    else:
        write_onnx(model, path)


def write_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """The state_dict alone, loadable with torch.load(path, weights_only=True)."""
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


def write_onnx(model: DenseNet, path: str | os.PathLike, *, opset: int = 18,
               metadata: dict[str, str] | None = None) -> None:
    """ONNX graph of `model` in eval mode, batch size dynamic and spatial sizes dynamic wherever
    the network allows them (a global-pool head: any size at least the smallest the network
    takes; a flatten into a linear layer fixes them), `metadata` in its metadata_props."""
    try:
        import onnx  # noqa: F401  (the exporter needs it; say so before tracing)
    except ImportError:
        raise d.SpecError([d.Diagnostic(d.MISSING_PACKAGE, "writing .onnx needs the onnx package", None,
                                        "pip install 'densedsl[onnx]'", file=str(path))]) from None
    was_training = model.training
    model.eval()
    example = torch.randn(2, *model.input_shape)
    # Dim.AUTO: export keeps an axis dynamic when every op the graph runs allows it, else fixes it
    axes = {0: torch.export.Dim("batch", min=1),
            **{axis: torch.export.Dim.AUTO for axis in range(2, example.dim())}}
    try:
        with atomic_path(path) as tmp, _quiet_exporter():
            try:
                program = torch.onnx.export(model, (example,), None, input_names=["input"],
                                            output_names=["output"], dynamic_shapes={"x": axes},
                                            opset_version=opset, dynamo=True, verbose=False)
            except torch.onnx.OnnxExporterError:
                # torch.export cannot always solve the size constraints of dynamic spatial axes
                # (a 3-D stride chain: "Eq(((x/4)//2) - 1, 0) cannot be solved"): the sizes the
                # spec states, with the batch still dynamic
                program = torch.onnx.export(model, (example,), None, input_names=["input"],
                                            output_names=["output"], dynamic_shapes={"x": {0: axes[0]}},
                                            opset_version=opset, dynamo=True, verbose=False)
            assert program is not None  # dynamo=True returns the program
            program.model.metadata_props.update(metadata or {})
            program.save(tmp, external_data=False)
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet_exporter():
    """Silence what torch's exporter says about itself, not about the user's model: "torchvision
    is not installed. Skipping torchvision::nms" (its op registry, once per torchvision op) and
    FutureWarnings/DeprecationWarnings from its own internals. Errors still raise."""
    import logging
    import warnings
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


# --- standalone Python source -------------------------------------------------------------------

_PREAMBLE = '''\
"""{name}: generated by densedsl {version} from {source}.

Standalone PyTorch (nothing but torch imported). Every module is written out, one dense layer a
line, from the same lowered op list densedsl analyses. The module names and hence the state_dict
keys are those of the densedsl-compiled model (torchvision's DenseNet layout), so weights saved
from either load into the other:

    model = build()
    model.load_state_dict(torch.load({weights}, weights_only=True))
"""

from collections import OrderedDict as ops

import torch
from torch import nn


class DenseLayer(nn.Sequential):
    """Concatenates the outputs it reads, then runs its modules in order."""

    def forward(self, features):
        x = torch.cat(features, 1) if len(features) > 1 else features[0]
        for module in self:
            x = module(x)
        return x


class DenseBlock(nn.ModuleDict):
    """denselayer1 … denselayerL; `reads` (per layer, the outputs x0 … x(j-1) it concatenates)
    and `emits` (the outputs the block concatenates) default to DenseNet's: all of them."""

    def __init__(self, *layers, reads=None, emits=None):
        super().__init__()
        for i, layer in enumerate(layers, start=1):
            self.add_module(f"denselayer{{i}}", layer)
        self.reads, self.emits = reads, emits

    def forward(self, x):
        return run_block(self.values(), x, self.reads, self.emits)
''' + "\n\n" + inspect.getsource(run_block).replace("{", "{{").replace("}", "}}")

# The generated file initialises exactly as the compiled model does: the same function's source.
_INIT = '\n\n' + inspect.getsource(init_weights).replace('{', '{{').replace('}', '}}') + '''

def build():
    model = {cls}()
    init_weights(model)
    return model


if __name__ == "__main__":
    model = build().eval()
    with torch.no_grad():
        y = model(torch.randn(1, {shape}))
    print(f"{{model.__class__.__name__}}: {{sum(p.numel() for p in model.parameters()):,}} parameters, "
          f"output {{tuple(y.shape)}}")
'''


def _int(value) -> str:
    """An integer as source text; anything else (a str smuggled into a hand-built Network) is a
    TypeError, never text in the generated module."""
    return str(operator.index(value))


# Names the generated module defines or imports itself: a network class by one of them would
# shadow it (a network called `f` would replace torch.nn.functional's `F`).
_TAKEN = frozenset({"DenseLayer", "DenseBlock", "nn", "torch", "build", "init_weights", "ops", "run_block"})


def _class_name(name: str) -> str:
    """A Python class name for network `name`: CamelCase of its letters and digits, never a
    keyword (`none` → `None`), never a name the module already uses, else `Network`."""
    words = "".join(ch if ch.isalnum() and f"a{ch}".isidentifier() else " " for ch in name).split()
    cls = "".join(w[:1].upper() + w[1:] for w in words)[:80] or "Network"
    cls = cls if cls.isidentifier() else f"Net{cls}"
    if keyword.iskeyword(cls) or keyword.issoftkeyword(cls) or cls in _TAKEN:
        cls = f"{cls}Net"
    return cls


def _docstring_text(text: str) -> str:
    """`text` as it may appear inside the generated module's (non-raw) triple-quoted docstring:
    its repr(), which escapes newlines and control characters, with backslashes doubled and
    double quotes escaped, so no user text can end the docstring or form an escape. The
    docstring then reads back with exactly repr(text) in its place."""
    return repr(text).replace("\\", "\\\\").replace('"', '\\"')


def _named(op_list) -> str:
    """`ops(norm=nn.BatchNorm2d(64), relu=nn.ReLU(inplace=True), …)`: the op table's source."""
    return "ops(" + ", ".join(f"{op.name}={ops_.source(op)}" for op in op_list) + ")"


def _head_lines(head) -> tuple[list[str], list[str]]:
    """(__init__ lines, forward lines) of the head: modules with weights where their path says
    (`features.norm5`, `classifier`), the rest in `self.head` after the features."""
    init, rest = [], []
    # hidden layers (`pre_logits.fc1`) sit with the pool and flatten, under the model's name
    holder = "pre_logits" if any((op.module or "").startswith("pre_logits.") for op in head) else "head"
    for op in head:
        if op.module is None or op.module.startswith("pre_logits."):
            rest.append(op)
            continue
        if rest:
            init.append(f"        self.{holder} = nn.Sequential({_named(rest)})")
        parent, _, name = op.module.rpartition(".")
        target = "f" if parent == "features" else "self"
        init.append(f"        {target}.add_module(\"{name}\", {ops_.source(op)})" if target == "f"
                    else f"        self.{name} = {ops_.source(op)}")
    forward = [f"        x = self.{holder}(x)"] if any(line.startswith(f"        self.{holder} =") for line in init) else []
    return init, forward + ["        x = self.classifier(x)"]


def python_source(network: n.Network, lowered: Sequence[lowering.Lowered] | None = None) -> str:
    """Readable, standalone Python source of `network`, written from its lowered op list (torch.cat
    in every layer, no tricks). `lowered` is `lowering.lower(network)` when the caller has it."""
    from .. import __version__

    source = network.span.file if network.span is not None else "a spec"
    cls = _class_name(network.name)
    # User text (the file name, the network's name) enters the source only through repr().
    lines = [_PREAMBLE.format(name=_docstring_text(network.name), version=__version__,
                              source=_docstring_text(str(source)),
                              weights=_docstring_text(f"{network.name}.pt"))]
    lines.append(f"\nclass {cls}(nn.Module):")
    lines.append(f"    \"\"\"Input {'x'.join(map(_int, network.input))}.\"\"\"\n")
    lines.append("    def __init__(self):")
    lines.append("        super().__init__()")
    lines.append("        f = self.features = nn.Sequential()")
    forward = ["        x = self.features(x)"]
    for stage in lowering.lower(network) if lowered is None else lowered:
        match stage:
            case lowering.LoweredStem():
                lines += [f"        f.add_module(\"{op.name}\", {ops_.source(op)})" for op in stage.ops]
            case lowering.LoweredBlock():
                lines.append(f"        f.add_module(\"{stage.name}\", DenseBlock(")
                lines += [f"            DenseLayer({_named(layer)})," for layer in stage.layers]
                if not stage.table.dense:  # indexes only: nothing of the user's text
                    reads = ", ".join("(" + "".join(f"{_int(i)}, " for i in r) + ")" for r in stage.table.reads)
                    emits = "".join(f"{_int(i)}, " for i in stage.table.emits)
                    lines.append(f"            reads=({reads},), emits=({emits}),")
                lines.append("        ))")
            case lowering.LoweredTransition():
                lines.append(f"        f.add_module(\"{stage.name}\", nn.Sequential({_named(stage.ops)}))")
            case lowering.LoweredHead():
                init, head_forward = _head_lines(stage.ops)
                lines += init
                forward += head_forward
            case _:
                assert_never(stage)
    lines.append("")
    lines.append("    def forward(self, x):")
    lines += forward
    lines.append("        return x\n")
    lines.append(_INIT.format(cls=cls, shape=", ".join(map(_int, network.input))))
    return "\n".join(lines)


__all__ = ["SUFFIXES", "check_output", "python_source", "write_onnx", "write_output", "write_weights"]
