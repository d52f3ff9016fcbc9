"""Hostile names against every writer: file names and network names that try to end a string
literal, a docstring or a DOT string, smuggle escapes, control characters or HTML, or are very
long. Generated source must import without running anything from them and still build the
same model; DOT must parse with `dot` and show the name; ONNX must not carry them."""

from __future__ import annotations

import builtins
import dataclasses
import importlib.util
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import densedsl
from densedsl import cli
from densedsl.analysis.figures import analyze
from densedsl.views.diagram import to_digraph

SPEC = """
network tiny(growth=4) {
    input 3x16x16
    stem {
        conv 8 kernel=3 padding=1
        norm
        relu
    }
    dense layers=2 growth=growth bottleneck=2
    transition compression=0.5
    dense layers=1 growth=3
    head classes=5
}
"""

# Each payload, if it ever ran, would create the file PWNED in the working directory or set
# builtins.PWNED. File names cannot hold "/" or NUL; everything else is fair game.
_RUN = 'open("PWNED", "w"); import builtins; builtins.PWNED = 1'
HOSTILE = {
    "triple-double": f'x"""\n{_RUN}\n"""',
    "triple-single": f"x'''\n{_RUN}\n'''",
    "trailing-backslash": "ends\\",
    "named-escape": "bad\\N{oops}\\x",   # \N{...} and a bare \x are SyntaxErrors in a plain literal
    "quote": 'say "hi"',
    "newlines": "line1\nline2\r\nline3",
    "controls": "tab\tbell\x07esc\x1b[31mdel\x7f",
    "unicode": "réseau ✓ 𝔘 \u2028 نموذج",
    "braces": "{name}{0}{{}}",
    "html": "<b>&amp;<i> <x> & \"",
    "dot-keyword": "digraph",
    "long": "n" * 240,                     # file names end at 255 bytes
}
HUGE = "a" * 1_000_000   # network names only: dot refuses strings over 16,384 characters


@pytest.fixture(autouse=True)
def no_payload_ran(tmp_path, monkeypatch):
    """Run in an empty directory and fail the test if any payload ran."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delattr(builtins, "PWNED", raising=False)
    yield
    assert not (tmp_path / "PWNED").exists(), "a name's payload ran"
    assert not hasattr(builtins, "PWNED"), "a name's payload ran"


def _network(name: str = "tiny"):
    return dataclasses.replace(densedsl.parse(SPEC).network, name=name)


def _import_file(path: Path):
    """Import a generated module from its file, as `import` would."""
    spec = importlib.util.spec_from_file_location("generated_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _same_layout(module, network) -> None:
    torch = pytest.importorskip("torch")
    from densedsl.nn.model import DenseNet
    with torch.device("meta"):
        generated = module.build()
        generated(torch.empty(2, *network.input))   # forward runs (a class named F would break it)
    ours = DenseNet(network, device="meta")
    assert [(k, v.shape) for k, v in generated.state_dict().items()] == \
        [(k, v.shape) for k, v in ours.state_dict().items()]


# --- .py export ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", HOSTILE.values(), ids=HOSTILE.keys())
def test_py_export_with_a_hostile_spec_file_name(name, tmp_path):
    pytest.importorskip("torch")
    spec = tmp_path / f"{name}.dense"
    spec.write_text(SPEC)
    out = tmp_path / f"{name[:200]}.py"
    assert cli.main(["compile", str(spec), "-o", str(out)]) == 0
    module = _import_file(out)
    assert repr(str(spec)) in module.__doc__   # the path is shown, escaped, not interpreted
    _same_layout(module, densedsl.load(spec).network)


@pytest.mark.parametrize("name", [*HOSTILE.values(), pytest.param(HUGE, marks=pytest.mark.slow),
                                  "", "none", "f", "transition", "True"],
                         ids=[*HOSTILE.keys(), "huge", "empty", "none", "f", "transition", "True"])
def test_py_export_with_a_hostile_network_name(name, tmp_path):
    from densedsl.nn.export import python_source
    network = _network(name)
    out = tmp_path / "generated.py"
    out.write_text(python_source(network), encoding="utf-8")
    module = _import_file(out)
    assert repr(name) in module.__doc__
    _same_layout(module, network)


class _SneakyInt(int):
    """An int that prints as code: what a hand-built Network could carry into the source."""

    def __str__(self) -> str:
        return f"{int(self)}) if not __import__('builtins').__setattr__('PWNED', 1) else (0"

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return str(self)


def test_py_export_writes_numbers_as_plain_ints(tmp_path):
    from densedsl.nn.export import python_source
    network = _network()
    conv = network.stem.ops[0]
    sneaky = dataclasses.replace(network, stem=dataclasses.replace(
        network.stem, ops=(dataclasses.replace(conv, kernel=_SneakyInt(3), out_channels=_SneakyInt(8)),
                           *network.stem.ops[1:])))
    out = tmp_path / "generated.py"
    out.write_text(python_source(sneaky), encoding="utf-8")
    _same_layout(_import_file(out), network)


@pytest.mark.parametrize("name", HOSTILE.values(), ids=HOSTILE.keys())
def test_pt_export_with_a_hostile_file_name(name, tmp_path):
    """torch.save names the zip's records after the file: the weights must still load."""
    torch = pytest.importorskip("torch")
    from densedsl.nn.model import DenseNet
    spec = tmp_path / "tiny.dense"
    spec.write_text(SPEC)
    out = tmp_path / f"{name[:200]}.pt"
    assert cli.main(["compile", str(spec), "-o", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    assert list(state) == list(DenseNet(densedsl.load(spec).network, device="meta").state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([spec.name, out.name])


# --- DOT -----------------------------------------------------------------------------------------

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")

# What the diagram shows for each name: printable text as it is, control characters escaped.
SHOWN = {
    **{k: v for k, v in HOSTILE.items() if v.isprintable()},
    "triple-double": f'x"""\\n{_RUN}\\n"""',
    "triple-single": f"x'''\\n{_RUN}\\n'''",
    "newlines": "line1\\nline2\\r\\nline3",
    "controls": "tab\\tbell\\x07esc\\x1b[31mdel\\x7f",
    "unicode": "réseau ✓ 𝔘 \\u2028 نموذج",
    "long": "n" * 200 + "… (40 more characters)",
    "huge": "a" * 200 + "… (999,800 more characters)",
    "empty": "(unnamed)",
}


def _svg_text(svg: bytes) -> str:
    """All text the SVG draws or titles, one line per element."""
    root = ET.fromstring(svg)
    return "\n".join("".join(e.itertext()) for e in root.iter()
                     if e.tag.rsplit("}", 1)[-1] in ("text", "title"))


@needs_dot
@pytest.mark.parametrize("detail", ["overview", "layers"])
@pytest.mark.parametrize("key", list(SHOWN))
def test_dot_with_a_hostile_network_name_parses_and_shows_it(key, detail):
    name = {**HOSTILE, "huge": HUGE, "empty": ""}[key]
    source = to_digraph(analyze(_network(name)), detail).source
    done = subprocess.run(["dot", "-Tsvg"], input=source.encode("utf-8"), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    lines = _svg_text(done.stdout).splitlines()
    assert any(SHOWN[key] in line for line in lines), lines[-3:]


@needs_dot
@pytest.mark.parametrize("name", HOSTILE.values(), ids=HOSTILE.keys())
def test_render_with_hostile_file_names(name, tmp_path):
    spec = tmp_path / f"{name}.dense"
    spec.write_text(SPEC)
    for ext in ("dot", "svg"):
        out = tmp_path / f"{name[:200]}.{ext}"
        assert cli.main(["render", str(spec), "-o", str(out)]) == 0
        data = out.read_bytes()
        if ext == "dot":
            data = subprocess.run(["dot", "-Tsvg"], input=data, capture_output=True, check=True).stdout
        assert "tiny" in _svg_text(data)


# --- ONNX ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_onnx_export_carries_no_file_or_temporary_name(tmp_path):
    pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    name = HOSTILE["triple-double"]
    spec = tmp_path / f"{name}.dense"
    spec.write_text(SPEC)
    out = tmp_path / f"{name}.onnx"
    assert cli.main(["compile", str(spec), "-o", str(out)]) == 0
    data = out.read_bytes()
    assert b"PWNED" not in data and b"densedsl-tmp" not in data and str(tmp_path).encode() not in data
    onnx.checker.check_model(onnx.load_from_string(data))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([spec.name, out.name])


# --- training curves (PNG) -------------------------------------------------------------------------

@pytest.mark.parametrize("name", [*HOSTILE.values(), r"$\bad{$ and $x^$"],
                         ids=[*HOSTILE.keys(), "mathtext"])
def test_curves_title_with_a_hostile_data_path(name, tmp_path):
    """The curves' title names the data set, path included; matplotlib must draw it as text."""
    pytest.importorskip("matplotlib")
    from densedsl.views.plots import write_curves
    metrics = [{"epoch": 1, "train_loss": 1.0, "test_loss": 1.1, "train_acc": 0.5, "test_acc": 0.4}]
    out = tmp_path / f"{name[:200].replace('$', 'S')}.png"
    write_curves(metrics, out, title=f"tiny on folder:{name}")
    assert out.read_bytes().startswith(b"\x89PNG")
