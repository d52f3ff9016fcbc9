"""The command line: output, exit codes, file problems, atomic writes, start-up imports."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from conftest import ROOT, ZOO

from densedsl.cli import build_parser, main

SPEC = "network n {\n    input 3x8x8\n    dense layers=2 growth=4\n    head classes=3\n}\n"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_prints_one_line_per_network_and_exits_0(capsys):
    code, out, err = run(capsys, "check", *map(str, ZOO))
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(ZOO)
    dn121 = next(line for line in lines if "densenet121:" in line)
    assert "7,978,856 params" in dn121 and "depth 121" in dn121 and "535 connections" in dn121


def test_check_reports_errors_with_location_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad.dense"
    bad.write_text("network n {\n    input 3x8x8\n    dense layers=6 grwoth=32\n}\n")
    code, out, err = run(capsys, "check", str(bad))
    assert code == 1 and out == ""
    assert err.startswith(f"{bad}:3:20: error[E102]: unknown setting 'grwoth' for dense block\n")
    assert "hint: did you mean 'growth'?" in err
    assert "Traceback" not in err


def test_check_continues_after_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.dense"
    bad.write_text("network n {\n")
    good = tmp_path / "good.dense"
    good.write_text(SPEC)
    code, out, err = run(capsys, "check", str(bad), str(good))
    assert code == 1 and "E002" in err and "good.dense: n:" in out


def test_check_with_set_and_network(tmp_path, capsys):
    code, out, _ = run(capsys, "check", str(ROOT / "specs/densenet_bc_cifar.dense"),
                       "--set", "depth=250", "growth=24")
    assert code == 0 and "15,324,406 params" in out and "depth 250" in out
    code, _, err = run(capsys, "check", str(ROOT / "specs/densenet_bc_cifar.dense"), "--set", "depth=101")
    assert code == 1 and "E106" in err and "97/6" in err
    code, _, err = run(capsys, "check", str(ROOT / "specs/densenet_bc_cifar.dense"), "--set", "dpeth=3")
    assert code == 1 and "E107" in err and "did you mean 'depth'?" in err
    code, _, err = run(capsys, "check", str(ROOT / "specs/densenet_bc_cifar.dense"), "--set", "depth")
    assert code == 1 and "NAME=VALUE" in err


@pytest.mark.parametrize("make, code", [
    (lambda p: None, "E901"),
    (lambda p: p.mkdir(), "E902"),
    (lambda p: p.write_bytes("network n { # café\n}\n".encode("latin-1")), "E903"),
    (lambda p: p.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00"), "E903"),
    (lambda p: p.write_text(""), "E904"),
    (lambda p: p.write_text("# just a comment\n"), "E904"),
])
def test_file_problems_are_clean_errors(tmp_path, capsys, make, code):
    path = tmp_path / "x.dense"
    make(path)
    status, out, err = run(capsys, "check", str(path))
    assert status == 1 and out == ""
    assert err.startswith(f"{path}: error[{code}]")
    assert "Traceback" not in err


def test_fmt_prints_check_and_write(tmp_path, capsys):
    path = tmp_path / "x.dense"
    messy = "network n{\n  input 3x8x8\n  dense layers = 2 growth=4\n}\n"
    path.write_text(messy)
    code, out, _ = run(capsys, "fmt", str(path))
    assert code == 0 and out == "network n {\n    input 3x8x8\n    dense layers=2 growth=4\n}\n"
    assert run(capsys, "fmt", "--check", str(path))[0] == 1
    assert path.read_text() == messy  # --check never writes
    assert run(capsys, "fmt", "--write", str(path))[0] == 0
    assert path.read_text() == out
    assert run(capsys, "fmt", "--check", str(path))[0] == 0
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_fmt_does_not_touch_a_file_with_errors(tmp_path, capsys):
    path = tmp_path / "x.dense"
    path.write_text("network n {\n  dense layers=\n}\n")
    code, _, err = run(capsys, "fmt", "--write", str(path))
    assert code == 1 and "E001" in err
    assert path.read_text() == "network n {\n  dense layers=\n}\n"


def test_fmt_check_on_the_zoo(capsys):
    assert run(capsys, "fmt", "--check", *map(str, ZOO))[0] == 0


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["check"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_internal_errors_are_reported_as_bugs(monkeypatch, capsys, tmp_path):
    import densedsl.language.spec

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(densedsl.language.spec, "load_all", boom)
    path = tmp_path / "x.dense"
    path.write_text(SPEC)
    code, _, err = run(capsys, "check", str(path))
    assert code == 3 and "internal error" in err and "Traceback" not in err
    code, _, err = run(capsys, "--traceback", "check", str(path))
    assert code == 3 and "Traceback" in err and "kaboom" in err


def test_python_dash_m_and_console_script_agree(tmp_path):
    path = tmp_path / "x.dense"
    path.write_text(SPEC)
    result = subprocess.run([sys.executable, "-m", "densedsl", "check", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and f"{path}: n:" in result.stdout


def test_light_commands_do_not_import_torch():
    code = ("import sys, densedsl, densedsl.cli, densedsl.analysis.figures, densedsl.language.fmt, densedsl.views.report\n"
            "from densedsl.cli import main\n"
            "main(['check', 'specs/densenet121.dense'])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr



def test_light_commands_and_the_language_server_do_not_import_networkx():
    """networkx (~0.2 s of a fresh process) is imported only for `Analysis.graph`: `check`,
    `summary`, `fmt`, `explain`, the memory models and the language server's analysis read the
    analysis' own graph (`Analysis.arch`)."""
    code = ("import sys\n"
            "from densedsl.cli import main\n"
            "from densedsl.lsp.document import analyze_text\n"
            "for argv in (['check', 'specs/densenet121.dense'], ['summary', 'specs/densenet121.dense'],\n"
            "             ['summary', '--layers', 'specs/densenet_bc_cifar.dense'],\n"
            "             ['fmt', '--check', 'specs/densenet121.dense'],\n"
            "             ['explain', 'specs/densenet121.dense', '--block', '2']):\n"
            "    assert main(argv) == 0, argv\n"
            "snap = analyze_text(open('specs/densenet121.dense').read(), 'densenet121.dense')\n"
            "assert snap.networks[0].analysis is not None and snap.networks[0].ops\n"
            "a = __import__('densedsl').analyze('specs/densenet121.dense')\n"
            "a.memory(mode='efficient'), a.memory(mode='inference')\n"
            "print('networkx' in sys.modules)\n"
            "a.graph\n"
            "print('networkx' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["False", "True"]  # and the test itself can see it

# --- option values are checked where they are parsed (exit 2, never an internal error) -----------

TINY = str(ROOT / "specs/tiny_digits.dense")
TRAIN = ("train", TINY, "--data", "digits")


@pytest.mark.parametrize("argv, option, words", [
    (("summary", TINY, "--batch", "0"), "--batch", "from 1 to"),
    (("diff", TINY, "--batch", "-3"), "--batch", "from 1 to"),
    (("sweep", TINY, "--grid", "growth=4,8", "--batch", "0"), "--batch", "from 1 to"),
    (("summary", TINY, "--input", "1x" + "9" * 5000 + "x8"), "--input", "CxHxW"),
    (("summary", TINY, "--input", "1x²x8"), "--input", "CxHxW"),
    (("check", TINY, "--max-memory", "1e400"), "--max-memory", "too large"),
    (("sweep", TINY, "--grid", "growth=4,8", "--max-params", "1e400"), "--max-params", "too large"),
    (("sweep", TINY, "--grid", "growth=4,8", "--max-flops", "1e400"), "--max-flops", "too large"),
    (("explain", TINY, "--block", "0"), "--block", "from 1 to"),
    (("explain", TINY, "--block", "1", "--layer", "-1"), "--layer", "from 1 to"),
    (("render", TINY, "-o", "x.dot", "--expand", "0"), "--expand", "from 1 to"),
    (("compile", TINY, "-o", "x.pt", "--memory-limit", "0"), "--memory-limit", "at least 1 byte"),
    (("compile", TINY, "-o", "x.pt", "--memory-limit", "1e400"), "--memory-limit", "not a size"),
    ((*TRAIN, "--epochs", "0"), "--epochs", "from 1 to"),
    ((*TRAIN, "--epochs", "-1"), "--epochs", "from 1 to"),
    ((*TRAIN, "--batch-size", "0"), "--batch-size", "from 1 to"),
    ((*TRAIN, "--lr", "-0.1"), "--lr", "[0, ∞)"),
    ((*TRAIN, "--lr", "nan"), "--lr", "finite"),
    ((*TRAIN, "--lr", "inf"), "--lr", "finite"),
    ((*TRAIN, "--momentum", "-1"), "--momentum", "[0, 1)"),
    ((*TRAIN, "--momentum", "1"), "--momentum", "[0, 1)"),
    ((*TRAIN, "--weight-decay", "-1"), "--weight-decay", "[0, ∞)"),
    ((*TRAIN, "--milestones", "0.5", "nan"), "--milestones", "fraction of the epochs"),
    ((*TRAIN, "--milestones", "1.5"), "--milestones", "(0, 1]"),
    ((*TRAIN, "--milestones", "0"), "--milestones", "(0, 1]"),
    ((*TRAIN, "--gamma", "-1"), "--gamma", "(0, 1]"),
    ((*TRAIN, "--gamma", "nan"), "--gamma", "finite"),
    ((*TRAIN, "--workers", "-1"), "--workers", "from 0 to 1,024"),
    ((*TRAIN, "--threads", "0"), "--threads", "from 1 to"),
    ((*TRAIN, "--seed", "1e20"), "--seed", "whole number"),
    ((*TRAIN, "--seed", "100000000000000000000"), "--seed", "whole number"),
    ((*TRAIN, "--seed", str(-(2**63) - 1)), "--seed", "from -9,223,372,036,854,775,808 to"),
    ((*TRAIN, "--max-steps", "0"), "--max-steps", "from 1 to"),
    ((*TRAIN, "--memory-limit", "lots"), "--memory-limit", "not a size"),
    (("eval", "run", "--batch-size", "0"), "--batch-size", "from 1 to"),
    (("eval", "run", "--workers", "-1"), "--workers", "from 0 to 1,024"),
])
def test_bad_option_values_are_usage_errors(capsys, argv, option, words):
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert f"argument {option}" in err and words in err and "Traceback" not in err


def test_option_values_at_the_edges_stay_valid():
    parser = build_parser()
    args = parser.parse_args([*TRAIN, "--lr", "0", "--weight-decay", "0", "--milestones", "0.01", "1",
                              "--gamma", "1", "--momentum", "0", "--workers", "0", "--seed", "-1",
                              "--epochs", "1", "--seed", str(2**63 - 1), "--memory-limit", "none"])
    assert args.lr == 0.0 and args.momentum == 0.0 and args.milestones == [0.01, 1.0] and args.seed == 2**63 - 1
    assert args.memory_limit == float("inf")
    assert parser.parse_args(["summary", TINY, "--batch", "1_000", "--input", "3X32x32"]).batch == 1000


def test_every_numeric_option_is_validated():
    """A new option with plain `type=int` or `type=float` would let 0, -1, nan or 1e400 through."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        for action in command._actions:
            assert action.type not in (int, float), f"{name} {action.option_strings}: use a checked type"


def test_malformed_set_is_bad_override(capsys):
    for item in ("depth", "=3", " =1"):
        code, _, err = run(capsys, "check", TINY, "--set", item)
        assert code == 1 and "error[E118]" in err and "NAME=VALUE" in err
    code, _, err = run(capsys, "diff", TINY, "--old-set", "depth")
    assert code == 1 and "--old-set: error[E118]: --old-set expects NAME=VALUE" in err


def test_a_missing_optional_package_is_e911_with_the_extra(capsys, monkeypatch):
    import densedsl.cli.spec as cli

    def needs_tqdm(args):
        raise ModuleNotFoundError("No module named 'tqdm'", name="tqdm")
    monkeypatch.setattr(cli, "_cmd_check", needs_tqdm)
    code, _, err = run(capsys, "check", TINY)
    assert code == 1 and "error[E911]" in err and "tqdm" in err and 'densedsl[train]' in err

    def bug(args):
        raise ModuleNotFoundError("No module named 'densedsl.nothing'", name="densedsl.nothing")
    monkeypatch.setattr(cli, "_cmd_check", bug)
    code, _, err = run(capsys, "check", TINY)
    assert code == 3 and "internal error" in err


def test_heatmap_without_matplotlib_is_e911(tmp_path, monkeypatch):
    from densedsl import SpecError
    from densedsl.views.heatmap import write_heatmap
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib now fails
    with pytest.raises(SpecError) as e:
        write_heatmap([[[1.0]]], tmp_path / "h.png")
    assert "E911" in str(e.value) and "matplotlib" in str(e.value) and 'densedsl[train]' in str(e.value)
    assert not (tmp_path / "h.png").exists()


def test_onnx_without_onnx_is_e911(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    code, _, err = run(capsys, "compile", TINY, "-o", str(tmp_path / "m.onnx"))
    assert code == 1 and "error[E911]" in err and 'densedsl[onnx]' in err
