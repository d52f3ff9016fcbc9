"""The command line under random use: any subcommand with any option values (valid, at the edges,
absurd, or garbage text) ends with exit 0, 1 or 2: never 3 (an internal error), never a
traceback, never a hang. Commands run in-process (`cli.main`, output captured) for speed; a
handful run as real processes at the end.

Nothing here trains or allocates for real: `train` and `eval` always carry `--memory-limit 1`
(placed last, so it wins), so a draw that passes every check is refused by the memory guard
(E307) before any data or model exists, and `.onnx` exports likewise.

The module trains one tiny run once (TRAINED below: tiny_digits, one epoch of 32 synthetic
images) and writes a few small data files (FILES/: .npy, .npz, .csv, garbage and empty ones),
so `predict` (--data, --top-k, -o), `compile RUN_DIR`, `eval RUN_DIR` and `train --init` meet
real inputs as well as absent ones, and `train --data` draws every source kind (npy:, npz:,
csv:, nifti:) beside the built-in ones.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from densedsl.cli import build_parser, main

TINY = ROOT / "specs/tiny_digits.dense"
# Commands that never return on their own (a server on stdin) are not fuzzed.
SKIPPED_COMMANDS = {"lsp"}

EDGE_NUMBERS = ["0", "1", "-1", "2", "0.5", "1.5", "-0.1", "nan", "-nan", "inf", "-inf", "1e20", "1e400",
                "-1e400", "100000000000000000000", "9" * 5000, "2147483648", "1_000", "0x10", "1e-400",
                "3x8x8", "1x30000x30000", "0x8x8", "16GiB", "1K", "none", "", " ", "²", "١٢"]
garbage = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                  max_size=12)
values = st.one_of(st.sampled_from(EDGE_NUMBERS), st.integers(-10**30, 10**30).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr), garbage)

# Data sources: FILES/ is the module's data folder (see `files`), TRAINED its trained run.
DATA_SOURCES = ["digits", "synthetic:8", "synthetic:-5", "synthetic:1e400", "cifar10:absent", "nope", "",
                "npy:FILES/x.npy,FILES/y.npy", "npy:FILES/x.npy", "npy:FILES/garbage.npy,FILES/y.npy",
                "npy:FILES/x.npy,FILES/y_short.npy", "npz:FILES/d.npz", "npz:FILES/empty.npz",
                "npz:FILES/garbage.npy", "csv:FILES/t.csv", "csv:FILES/t.csv,FILES/t.csv", "csv:FILES/empty.csv",
                "csv:FILES/absent.csv", "nifti:FILES/absent.nii.gz", "nifti:FILES/garbage.npy", "folder:FILES",
                "FILES/x.npy", "FILES/t.csv", "FILES/garbage.npy", "FILES/empty.csv", "FILES"]

# Option values beyond `values` (a test below keeps this in step with build_parser).
OPTIONS: dict[str, list[str]] = {
    "--network": ["tiny_digits", "nope"],
    "--set": ["growth=4", "classes=70000000", "growth=0", "depth", "=3", "growth=1e400", "classes=-1"],
    "--data": DATA_SOURCES,
    "--target": ["y", "x1", "nope", "", "y,y"],
    "--drop": ["x1", "y", "nope", "x1,x2"],
    "--init": ["TRAINED", "TRAINED/checkpoint.pt", "FILES/garbage.npy", "FILES/x.npy", "absent.pt"],
    "--weights": ["TRAINED", "TRAINED/checkpoint.pt", "FILES/garbage.npy", "absent.pt"],
    "--top-k": ["1", "2", "10", "11", "0", "-1", "1e9", "nan"],
    "--val-split": ["0.25", "0", "1", "0.999", "-0.1", "nan", "1e-9", "50%"],
    "--patience": ["1", "0", "-1", "1e9"],
    "--normalize": ["data", "imagenet", "none", "0.5,0.25", "0.5,0", "nan,1", "0.5", "1,2,3"],
}
# Options whose values are drawn from OPTIONS only most of the time, and sometimes from `values`.
MOSTLY_LISTED = {"--top-k", "--val-split", "--patience", "--normalize"}


def _subcommands() -> dict[str, object]:
    parser = build_parser()
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices


def _options_of(command: str) -> dict[str, object]:
    """option string → its argparse action, for one subcommand."""
    return {s: a for a in _subcommands()[command]._actions for s in a.option_strings if s.startswith("--")}


COMMANDS = sorted(set(_subcommands()) - SKIPPED_COMMANDS)


@st.composite
def invocations(draw) -> list[str]:
    command = draw(st.sampled_from(COMMANDS))
    options = _options_of(command)
    argv = [command]
    if command in ("eval", "predict"):
        argv.append(draw(st.sampled_from(["RUN", "TRAINED", "TRAINED/checkpoint.pt", "absent/checkpoint.pt",
                                          "FILES/garbage.npy", str(TINY), "-"])))
    elif command in ("compile", "render") and draw(st.booleans()):
        argv.append(draw(st.sampled_from(["TRAINED", "TRAINED/checkpoint.pt", "RUN"])))
    elif command == "train":
        argv.append(draw(st.sampled_from([str(TINY), "SPEC", "FILES/table.dense", "absent.dense", "."])))
    else:
        argv.append(draw(st.sampled_from([str(TINY), "SPEC", "absent.dense", "."])))
    if command == "diff" and draw(st.booleans()):
        argv.append(str(TINY))
    if command in ("compile", "render"):
        suffixes = [".pt", ".py", ".onnx", ".h5", ""] if command == "compile" else [".dot", ".svg", ".png", ".txt"]
        argv += ["-o", "OUT" + draw(st.sampled_from(suffixes))]
    if command == "render" and draw(st.booleans()):
        argv += ["--detail", draw(st.sampled_from(["matrix", "layers", "blocks"]))]
    if command == "predict":
        argv += ["--data", draw(st.sampled_from(["FILES/x.npy", "FILES/t.csv", "FILES/one.png", "FILES"]
                                                 + DATA_SOURCES))]
    if command == "sweep":
        argv += ["--grid", draw(st.sampled_from(["growth=4,8", "growth=", "growth=4 growth=8",
                                                  "classes=10,70000000", "nope=1"]))]
    if command == "explain":
        argv += ["--block", draw(st.sampled_from(["1", "2", "0", "-1", "nan"]))]
    if command == "train":
        data = draw(st.sampled_from(DATA_SOURCES))
        argv += ["--data", data]
        if data.startswith("csv:") and draw(st.booleans()):
            argv += ["--target", "y"]
    names = sorted(o for o in options if o not in ("--help", "--version"))
    for name in draw(st.lists(st.sampled_from(names), max_size=4)):
        action = options[name]
        argv.append(name)
        if action.nargs == 0:
            continue
        if action.choices:
            argv.append(draw(st.one_of(st.sampled_from(sorted(map(str, action.choices))), garbage)))
        elif name in OPTIONS and (name not in MOSTLY_LISTED or draw(st.integers(0, 3))):
            argv.append(draw(st.sampled_from(OPTIONS[name])))
        else:
            argv.append(draw(values))
    if command in ("train", "eval") or (command == "compile" and argv[argv.index("-o") + 1].endswith(".onnx")):
        argv += ["--memory-limit", "1"]
    if command == "train":
        argv += ["--out", "RUNS/run", "--no-progress", "--device", "cpu"]
    return argv


def _run_in_process(argv: list[str], workdir: Path, files: Path | None = None,
                    trained: Path | None = None) -> tuple[int, str]:
    argv = [a.replace("SPEC", str(workdir / "spec.dense")).replace("OUT", str(workdir / "out"))
            .replace("RUNS", str(workdir / "runs")).replace("RUN", str(workdir / "runs/run")) for a in argv]
    if files is not None:
        argv = [a.replace("FILES", str(files)) for a in argv]
    if trained is not None:
        argv = [a.replace("TRAINED", str(trained)) for a in argv]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as e:      # argparse: usage errors and --help
            code = e.code if isinstance(e.code, int) else 2
    return code, stdout.getvalue() + stderr.getvalue()


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def files(workdir: Path) -> Path:
    return write_files(workdir / "files")


@pytest.fixture(scope="module")
def trained(workdir: Path) -> Path:
    return train_once(workdir)


def write_files(folder: Path) -> Path:
    """Small data files of every kind `--data` reads, valid and not."""
    folder.mkdir()
    rng = np.random.RandomState(0)
    np.save(folder / "x.npy", rng.rand(6, 1, 8, 8).astype(np.float32))
    np.save(folder / "y.npy", np.arange(6) % 10)
    np.save(folder / "y_short.npy", np.arange(2))
    np.savez(folder / "d.npz", x=rng.rand(6, 1, 8, 8).astype(np.float32), y=np.arange(6) % 10)
    np.savez(folder / "empty.npz")
    (folder / "garbage.npy").write_bytes(b"\x93NUMPY\x01\x00garbage" + bytes(range(256)))
    (folder / "t.csv").write_text("x1,x2,y\n" + "".join(f"{i},{i * 0.5},{i % 2}\n" for i in range(8)))
    (folder / "empty.csv").write_text("")
    # a tabular network for t.csv's two features (x1, x2) and its two classes (y)
    (folder / "table.dense").write_text("network table(features=2, classes=2) {\n    input features\n"
                                        "    defaults growth=4 norm=none\n    stem {\n        linear 8\n"
                                        "        relu\n    }\n    dense layers=2\n    head classes=classes\n}\n")
    (folder / "one.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder


def train_once(workdir: Path) -> Path:
    """One real run of tiny_digits (a second or two), for predict, compile, eval and --init."""
    out = workdir / "trained"
    code, output = _run_in_process(["train", str(TINY), "--data", "synthetic:32", "--epochs", "1",
                                    "--batch-size", "16", "--out", str(out), "--no-progress",
                                    "--device", "cpu"], workdir)
    assert code == 0, output[-2000:]
    return out


@settings(max_examples=int(os.environ.get("DENSEDSL_FUZZ_EXAMPLES", "120")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(argv=invocations())
@example(argv=["summary", str(TINY), "--batch", "0"])
@example(argv=["sweep", str(TINY), "--grid", "growth=4,8", "--max-params", "1e400"])
@example(argv=["train", str(TINY), "--data", "digits", "--lr", "nan", "--memory-limit", "1", "--out", "RUNS/run"])
@example(argv=["train", str(TINY), "--data", "digits", "--seed", "100000000000000000000", "--out", "RUNS/run"])
@example(argv=["train", str(TINY), "--data", "digits", "--set", "classes=70000000", "--out", "RUNS/run",
               "--device", "cpu"])
@example(argv=["compile", str(TINY), "--set", "classes=70000000", "-o", "OUT.pt", "--memory-limit", "1"])
@example(argv=["check", str(TINY), "--set", "depth"])
@example(argv=["predict", "TRAINED", "--data", "FILES/x.npy", "--top-k", "2", "-o", "OUT.csv"])
@example(argv=["compile", "TRAINED", "-o", "OUT.py"])
@example(argv=["render", str(TINY), "-o", "OUT.svg", "--detail", "matrix"])
@example(argv=["train", str(TINY), "--data", "npz:FILES/d.npz", "--val-split", "0.25", "--keep", "best",
               "--patience", "1", "--normalize", "0.5,0.25", "--freeze-bn", "--memory-limit", "1",
               "--out", "RUNS/run"])
@example(argv=["train", "FILES/table.dense", "--data", "csv:FILES/t.csv", "--target", "y", "--drop", "x1",
               "--memory-limit", "1", "--out", "RUNS/run"])
def test_any_invocation_ends_cleanly(workdir, files, trained, argv):
    case = Path(tempfile.mkdtemp(dir=workdir))
    (case / "spec.dense").write_text(TINY.read_text())
    code, output = _run_in_process(argv, case, files, trained)
    assert code in (0, 1, 2), f"exit {code} for {argv}:\n{output[-2000:]}"
    assert "Traceback" not in output and "internal error" not in output, output[-2000:]


SUBPROCESS_CASES = [
    (["summary", str(TINY), "--batch", "0"], 2),
    (["sweep", str(TINY), "--grid", "growth=4,8", "--max-params", "1e400"], 2),
    (["check", str(TINY), "--set", "depth"], 1),
    (["train", str(TINY), "--data", "digits", "--lr", "-0.1"], 2),
    (["compile", str(TINY), "--set", "classes=70000000", "-o", "{tmp}/big.pt", "--memory-limit", "16GiB"], 1),
]


@pytest.mark.parametrize("argv, expected", SUBPROCESS_CASES)
def test_real_processes_end_cleanly(tmp_path, argv, expected):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    p = subprocess.run([sys.executable, "-m", "densedsl", *argv], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == expected, p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    assert list(tmp_path.iterdir()) == []   # nothing written, not even a run directory


def test_listed_values_belong_to_options_the_parser_has():
    every = {o for c in COMMANDS for o in _options_of(c)}
    assert set(OPTIONS) <= every, set(OPTIONS) - every
    assert MOSTLY_LISTED <= set(OPTIONS)
