"""The default CPU threads of `densedsl train` (issue 14): passive OpenMP waits set before torch
loads, and one thread per core less the busy ones. Speed itself: bench/bench_threads.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT

from densedsl import cli
from densedsl.training import threads as cpu


@pytest.mark.parametrize("torch_default, cpus, load, expected", [
    (2, 2, 5.3, 1),     # a 2-core machine loaded by others: one thread, not two fighting
    (2, 2, 0.4, 2),     # idle: torch's default
    (8, 8, 2.6, 5),     # three cores busy elsewhere
    (4, 8, 0.0, 4),     # never more than torch's default (OMP_NUM_THREADS, physical cores)
    (8, 8, 100.0, 1),   # at least one
    (6, 8, None, 6),    # no load average on this system: torch's default
])
def test_pick_takes_the_busy_cores_off_torchs_default(torch_default, cpus, load, expected):
    assert cpu.pick(torch_default, cpus, load) == expected


def test_the_cli_asks_for_passive_waits_unless_the_user_chose(monkeypatch, capsys):
    spec = str(ROOT / "specs" / "tiny_digits.dense")
    environ = {k: v for k, v in os.environ.items() if k != cpu.WAIT_POLICY}
    monkeypatch.setattr(os, "environ", environ)
    assert cli.main(["check", spec]) == 0
    assert environ[cpu.WAIT_POLICY] == "PASSIVE"
    environ[cpu.WAIT_POLICY] = "active"
    assert cli.main(["check", spec]) == 0
    assert environ[cpu.WAIT_POLICY] == "active"


def test_set_threads_follows_who_chose(monkeypatch):
    torch = pytest.importorskip("torch")
    from densedsl.training.train import _set_threads
    before = torch.get_num_threads()
    monkeypatch.delenv(cpu.THREADS_VARIABLE, raising=False)
    monkeypatch.setenv(cpu.WAIT_POLICY, "PASSIVE")
    try:
        assert _set_threads(None) == "the process's; OpenMP wait passive"  # the library keeps it
        assert torch.get_num_threads() == before
        assert _set_threads(3) == "--threads; OpenMP wait passive" and torch.get_num_threads() == 3
        monkeypatch.setattr(cpu, "busy_cpus", lambda: 7.2)
        monkeypatch.setattr(cpu, "usable_cpus", lambda: 8)
        torch.set_num_threads(4)  # stands for torch's default here
        assert _set_threads("auto") == "auto: 8 CPUs, load 7.2; OpenMP wait passive"
        assert torch.get_num_threads() == 1
        monkeypatch.setenv(cpu.THREADS_VARIABLE, "2")  # the user's OMP_NUM_THREADS stands
        torch.set_num_threads(2)
        assert _set_threads("auto") == "OMP_NUM_THREADS; OpenMP wait passive"
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_train_without_threads_reports_the_rule_and_passive_waits(tmp_path):
    """A real process: the wait policy must be in place before torch loads OpenMP."""
    pytest.importorskip("torch")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    env["PYTHONPATH"] = str(ROOT)
    spec = tmp_path / "t.dense"
    spec.write_text("network t {\n input 1x4x4\n dense layers=1 growth=2\n head classes=2\n}\n")
    done = subprocess.run([sys.executable, "-m", "densedsl", "train", str(spec), "--data", "synthetic:8",
                           "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress",
                           "--out", str(tmp_path / "run")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.split()[:1] == ["threads"])
    assert "auto: " in line and "CPUs, load " in line and line.endswith("OpenMP wait passive)")
    import torch
    config = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["config"]
    assert config["threads"] == int(line.split()[1]) and config["threads_why"].startswith("auto: ")
