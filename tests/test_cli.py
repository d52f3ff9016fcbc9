"""The command line: output, exit codes, file problems, atomic writes, start-up imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from densedsl.cli import main

from conftest import ROOT, ZOO

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
    import densedsl.spec

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(densedsl.spec, "load_all", boom)
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
    code = ("import sys, densedsl, densedsl.cli, densedsl.analysis, densedsl.fmt, densedsl.report\n"
            "from densedsl.cli import main\n"
            "main(['check', 'specs/densenet121.dense'])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
