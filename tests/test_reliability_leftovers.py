"""Issue 24's leftovers: a shape where a number is expected, numpy numbers as parameters, a full
disk or a file-size limit while writing, a tabular export written whole or not at all, escape
sequences in user-controlled strings on success paths, and `--set blocks=6` for a list."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import densedsl
from densedsl import cli
from densedsl.language.resolve.vocabulary import (
    DEFAULT_SETTINGS,
    DENSE_SETTINGS,
    EXPECT_KEYS,
    HEAD_SETTINGS,
    TRANSITION_SETTINGS,
)

DENSENET = str(Path(__file__).resolve().parents[1] / "specs" / "densenet.dense")
_WINDOWS = ("kernel", "stride", "padding")  # the settings that take one number per axis

_TEMPLATE = """network n(k=2) {{
    input 3x16x16
    {defaults}
    stem {{
        conv 8 kernel=3
    }}
    dense {dense}
    transition {transition}
    dense layers=1 growth=4
    head {head}
    {expect}
}}
"""


def _spec(where: str, name: str, value: str) -> str:
    """The drawn setting in its place; the first dense block's layers and growth come from
    `defaults` unless the drawn setting is one of them (a setting given twice is another error)."""
    parts = {"defaults": "", "dense": "", "transition": "", "head": "", "expect": ""}
    base = {"layers": "2", "growth": "4"}
    if where in ("defaults", "dense"):
        base.pop(name, None)
    parts["head"] = "" if (where, name) == ("head", "classes") else "classes=3"
    parts["defaults"] = "defaults " + " ".join(f"{k}={v}" for k, v in base.items())
    parts[where] += f" {name}={value}" if where != "expect" else f"expect {name}={value}"
    return _TEMPLATE.format(**parts)


# --- 1. a shape where a number or keyword is expected -------------------------------------------

@pytest.mark.parametrize("where, name, value", [
    ("dense", "growth", "3x2"),
    ("dense", "growth", "3 x k"),
    ("dense", "order", "1x1"),
    ("dense", "layers", "3x2"),
    ("expect", "params", "1 x k"),
    ("expect", "params", "1x3"),
    ("defaults", "growth", "3x2"),
    ("defaults", "compression", "1x1"),
    ("transition", "channels", "2 x 2"),
])
def test_a_shape_where_a_number_is_expected_is_a_located_error(tmp_path, capsys, where, name, value):
    text = _spec(where, name, value)
    path = tmp_path / "shape.dense"
    path.write_text(text)
    assert cli.main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    line = next(i for i, x in enumerate(text.splitlines(), 1) if f"{name}={value}" in x)
    column = text.splitlines()[line - 1].index(f"{name}={value}") + len(name) + 2
    assert f"{path}:{line}:{column}: error[E104]:" in err
    assert "not a shape" in err or "not the shape" in err
    assert "internal error" not in err


_SETTINGS = sorted({("dense", s) for s in DENSE_SETTINGS} | {("transition", s) for s in TRANSITION_SETTINGS}
                   | {("head", s) for s in HEAD_SETTINGS} | {("defaults", s) for s in DEFAULT_SETTINGS}
                   | {("expect", s) for s in EXPECT_KEYS})
_SHAPES = st.one_of(
    st.lists(st.integers(0, 9), min_size=2, max_size=4).map(lambda xs: "x".join(map(str, xs))),
    st.lists(st.sampled_from(["1", "k", "k+1", "(2)", "k//2"]), min_size=2, max_size=4).map(" x ".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(place=st.sampled_from(_SETTINGS), shape=_SHAPES)
def test_any_setting_given_a_shape_resolves_or_is_refused_cleanly(place, shape):
    where, name = place
    text = _spec(where, name, shape)
    try:
        densedsl.parse(text)
    except densedsl.SpecError as e:
        assert all(x.code.code.startswith("E") and x.span is not None for x in e.diagnostics)
        if name not in _WINDOWS:
            assert any(x.code.code == "E104" and "shape" in x.message for x in e.diagnostics)
        return
    assert name in _WINDOWS  # only a window setting takes a shape


# --- 2. numpy numbers as parameters ----------------------------------------------------------------

_DEPTH = "network n(depth=10, rate=0.5) {\n    input 3x8x8\n    dense layers=depth growth=4 dropout=rate\n}\n"


@pytest.mark.parametrize("value", [numpy.int64(6), numpy.int32(6), numpy.uint8(6), numpy.int16(6)])
def test_numpy_integers_are_parameters_like_ints(value):
    assert densedsl.parse(_DEPTH, depth=value).network.stages[0].layers == 6


@pytest.mark.parametrize("value", [numpy.float32(0.25), numpy.float64(0.25), numpy.float16(0.25)])
def test_numpy_floats_are_parameters_like_floats(value):
    assert densedsl.parse(_DEPTH, rate=value).network.stages[0].dropout == 0.25


def test_a_list_of_numpy_integers_is_a_list_parameter():
    spec = densedsl.load(DENSENET, blocks=[numpy.int64(2)] * 4, growth=numpy.int64(4))
    assert [s.layers for s in spec.network.stages if hasattr(s, "layers")] == [2, 2, 2, 2]


@pytest.mark.parametrize("value", [object(), numpy.array([1, 2]), b"6", {"a": 1}])
def test_other_python_types_are_refused_naming_the_parameter(value):
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(_DEPTH, depth=value)
    assert [x.code.code for x in e.value.diagnostics] == ["E104"]
    assert "parameter 'depth'" in str(e.value)


# --- 6. --set blocks=6 for a list parameter --------------------------------------------------------

def _layers(spec) -> list[int]:
    return [s.layers for s in spec.network.stages if hasattr(s, "layers")]


@pytest.mark.parametrize("raw", ["6", " 6 ", "3+3", "6,", "[6]"])
def test_one_value_for_a_list_parameter_is_a_one_element_list(raw):
    assert _layers(densedsl.load(DENSENET, blocks=raw)) == [6]


def test_set_one_value_for_a_list_parameter_on_the_command_line(capsys):
    assert cli.main(["summary", DENSENET, "--set", "blocks=6", "--set", "growth=4"]) == 0
    one = capsys.readouterr().out
    assert cli.main(["summary", DENSENET, "--set", "blocks=6,", "--set", "growth=4"]) == 0
    assert capsys.readouterr().out == one and "denseblock1" in one


def test_a_number_parameter_given_one_value_stays_a_number():
    spec = densedsl.load(DENSENET, blocks="2", growth="4")
    assert [s.growth for s in spec.network.stages if hasattr(s, "growth")] == [4]


# --- 3. a full disk or a file-size limit -----------------------------------------------------------

_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of failing it
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from densedsl import cli
sys.exit(cli.main(sys.argv[2:]))
"""
ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "specs" / "tiny_digits.dense")


def _run(args: list[str], cwd: Path, limit: int | None = None, stdout=subprocess.PIPE):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", _LIMITED, str(limit), *args] if limit is not None else \
        [sys.executable, "-m", "densedsl", *args]
    return subprocess.run(command, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=600)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize("output", ["model.pt", "model.onnx", "model.py"])
def test_compile_past_a_file_size_limit_is_e905_and_leaves_nothing(tmp_path, output):
    if output.endswith(".onnx"):
        pytest.importorskip("onnx")
    r = _run(["compile", TINY, "-o", output], tmp_path, limit=2000)
    assert r.returncode == 1, r.stderr
    assert f"{output}: error[E905]: cannot write the file: File too large" in r.stderr
    assert "internal error" not in r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="RLIMIT_FSIZE is POSIX")
def test_train_past_a_file_size_limit_is_e905_naming_the_checkpoint(tmp_path):
    r = _run(["train", TINY, "--data", "synthetic:32", "--epochs", "1", "--no-progress", "--threads", "1",
              "--out", "run"], tmp_path, limit=100_000)
    assert r.returncode == 1, r.stderr
    assert "checkpoint.pt: error[E905]: cannot write the file: File too large" in r.stderr
    assert "internal error" not in r.stderr
    assert not [p.name for p in (tmp_path / "run").iterdir() if "densedsl-tmp" in p.name or p.suffix == ".pt"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", [["check", TINY], ["summary", TINY], ["summary", TINY, "--json"],
                                     ["fmt", TINY]])
def test_a_full_stdout_is_e905(tmp_path, command):
    with open("/dev/full", "w") as full:
        r = _run(command, tmp_path, stdout=full)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("<stdout>: error[E905]: cannot write the output: No space left on device")
    assert "Exception ignored" not in r.stderr and "internal error" not in r.stderr


# --- 4 and 5: a table's export, and what reaches the terminal ------------------------------------

_HOSTILE = "\x1b[31m"
from networks import mlp_text  # noqa: E402

_TABLE = mlp_text("m", "features", "features=2, classes=2")


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A run trained on a CSV whose class values and a column name carry an escape sequence and a
    newline; its spec file's name too."""
    import csv
    import io
    where = tmp_path_factory.mktemp("table")
    rng = numpy.random.RandomState(0)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["size", f"wei{_HOSTILE}ght\nx", "kind"])
    for size, weight in zip(rng.uniform(0, 1, 40), rng.uniform(0, 1, 40)):
        writer.writerow([f"{size:.3f}", f"{weight:.3f}", f"red{_HOSTILE}" if size > 0.5 else "blue\nsky"])
    (where / "t.csv").write_text(buf.getvalue())
    spec = where / f"sp{_HOSTILE}ec\nx.dense"
    spec.write_text(_TABLE)
    argv = ["train", str(spec), "--data", f"csv:{where / 't.csv'}", "--target", "kind", "--epochs", "1",
            "--no-progress", "--threads", "1", "--out", str(where / "run")]
    return where, spec, argv


def test_train_prints_no_control_characters_from_the_data_or_the_file_name(table_run, capsys, tmp_path):
    where, spec, argv = table_run
    argv = [*argv[:-1], str(tmp_path / "run")]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err
    header = out.splitlines()
    assert header[0].startswith("training m")
    assert any("red\ufffd[31m" in line and "blue\ufffdsky" in line for line in header), out
    assert not any(line.startswith(("sky", "ght", "x.dense")) for line in header), out
    assert header[-1].startswith("done: ")


@pytest.mark.parametrize("command, shown", [
    (["check"], "sp\ufffd[31mec\ufffdx.dense: m"),
    (["fmt", "--check"], None),
    (["compile", "-o", "OUT.py"], "o\ufffd[31m\ufffdut.py: m, "),
    (["render", "-o", "OUT.svg"], "o\ufffd[31m\ufffdut.svg: m, "),
])
def test_success_lines_print_no_control_characters_from_file_names(table_run, capsys, tmp_path, command, shown):
    where, spec, _ = table_run
    if command[0] == "fmt":
        spec = tmp_path / f"sp{_HOSTILE}ec\nx.dense"
        spec.write_text(_TABLE.replace("    input", "  input"))  # not in canonical form
    argv = [command[0], str(spec), *(str(tmp_path / f"o{_HOSTILE}\nut{Path(x).suffix}") if x.startswith("OUT")
                                     else x for x in command[1:])]
    code = cli.main(argv)
    out, err = capsys.readouterr()
    if command[0] == "render" and code == 1 and "E906" in err:
        pytest.skip("Graphviz's dot is not installed")
    assert "\x1b" not in out + err
    if shown is None:  # fmt --check: the spec is not in canonical form, and says so on one line
        assert code == 1 and err == f"{str(spec).replace(_HOSTILE, chr(0xfffd) + '[31m').replace(chr(10), chr(0xfffd))}" \
            ": would reformat\n"
        return
    assert code == 0, err
    assert (out + err).startswith(str(tmp_path if command[0] != "check" else where)) and shown in out + err
    assert len((out + err).strip().splitlines()) == 1


def test_explain_prints_no_control_characters_from_comments(tmp_path, capsys):
    spec = tmp_path / "c.dense"
    spec.write_text(_TABLE.replace("dense layers=2", f"dense layers=2  # a comment {_HOSTILE}red"))
    assert cli.main(["explain", str(spec), "--block", "1"]) == 0
    out = capsys.readouterr().out
    assert "# a comment \ufffd[31mred" in out and "\x1b" not in out


@pytest.mark.parametrize("output", ["m.pt", "m.onnx"])
def test_a_table_export_writes_the_model_and_its_pipeline_or_neither(table_run, capsys, tmp_path, output):
    if output.endswith(".onnx"):
        pytest.importorskip("onnxscript")
    where, spec, argv = table_run
    if not (where / "run").exists():
        assert cli.main(argv) == 0
    (tmp_path / "m.pipeline.json").mkdir()  # the pipeline cannot be written
    capsys.readouterr()
    assert cli.main(["compile", str(where / "run"), "-o", str(tmp_path / output)]) == 1
    assert "m.pipeline.json: error[E902]" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pipeline.json"]
    assert cli.main(["compile", str(spec), "--weights", str(where / "run"), "-o", str(tmp_path / output)]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pipeline.json"]
    (tmp_path / "m.pipeline.json").rmdir()
    assert cli.main(["compile", str(where / "run"), "-o", str(tmp_path / output)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([output, "m.pipeline.json"])
