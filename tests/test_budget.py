"""The memory guard (E307): how the limit is measured, what each command needs, and that every
command that allocates refuses *before* it allocates anything."""

from __future__ import annotations

import math
import sys

import pytest
from conftest import ROOT

import densedsl
from densedsl.analysis import budget
from densedsl.analysis.figures import analyze
from densedsl.cli import main
from densedsl.nn import build as compiler

TINY = ROOT / "specs/tiny_digits.dense"
# 5,950,064,560 parameters: `check` accepts it, building it takes 22 GiB.
HUGE_HEAD = ("--set", "classes=70000000")


@pytest.fixture(autouse=True)
def no_env_limit(monkeypatch):
    monkeypatch.delenv(budget.ENV, raising=False)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_model_built(monkeypatch):
    """Fail the test if a model is built (the guard must refuse first)."""
    def refuse(*args, **kwargs):
        raise AssertionError("build_model was called although the guard should have refused")
    monkeypatch.setattr(compiler, "build_model", refuse)


# --- measuring the limit ---------------------------------------------------------------------------

def test_meminfo_available_is_read_in_bytes(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n")
    found = budget._meminfo_available(str(meminfo))
    assert found == budget.Limit(8000000 * 1024, "MemAvailable in /proc/meminfo")
    assert budget._meminfo_available(str(tmp_path / "absent")) is None


def _cgroup_tree(tmp_path, v2: bool, limit: str, usage: int, inactive: int):
    proc = tmp_path / "cgroup"
    root = tmp_path / "fs"
    if v2:
        proc.write_text("0::/job/step\n")
        leaf = root / "job" / "step"
        leaf.mkdir(parents=True)
        (leaf / "memory.max").write_text(limit + "\n")
        (leaf / "memory.current").write_text(f"{usage}\n")
        (leaf / "memory.stat").write_text(f"anon 5\ninactive_file {inactive}\nactive_file 7\n")
    else:
        proc.write_text("5:cpu:/\n4:memory:/docker/abc\n")
        # Inside a container the mount's root is the container's own cgroup: /docker/abc is absent.
        leaf = root / "memory"
        leaf.mkdir(parents=True)
        (leaf / "memory.limit_in_bytes").write_text(limit + "\n")
        (leaf / "memory.usage_in_bytes").write_text(f"{usage}\n")
        (leaf / "memory.stat").write_text(f"total_inactive_file {inactive}\n")
    return str(proc), str(root)


@pytest.mark.parametrize("v2", [True, False])
def test_cgroup_limit_less_working_set(tmp_path, v2):
    proc, root = _cgroup_tree(tmp_path, v2, str(4 * 2**30), usage=3 * 2**30, inactive=2**30)
    [found] = budget._cgroup_available(proc, root)
    assert found.bytes == 4 * 2**30 - (3 * 2**30 - 2**30)   # page cache does not count as used
    assert ("memory.max" if v2 else "memory.limit_in_bytes") in found.source


@pytest.mark.parametrize("v2, unlimited", [(True, "max"), (False, str(9223372036854771712))])
def test_cgroup_without_a_limit_is_ignored(tmp_path, v2, unlimited):
    proc, root = _cgroup_tree(tmp_path, v2, unlimited, usage=10, inactive=0)
    assert budget._cgroup_available(proc, root) == []


def test_available_takes_the_smallest_figure(monkeypatch):
    monkeypatch.setattr(budget, "_meminfo_available", lambda: budget.Limit(8 * 2**30, "meminfo"))
    monkeypatch.setattr(budget, "_cgroup_available", lambda: [budget.Limit(2 * 2**30, "cgroup")])
    assert budget.available() == budget.Limit(2 * 2**30, "cgroup")


def test_without_proc_it_falls_back_to_physical_memory_then_to_no_check(monkeypatch):
    # macOS and the BSDs have no /proc: sysconf still knows the physical memory.
    monkeypatch.setattr(budget, "_meminfo_available", lambda: None)
    monkeypatch.setattr(budget, "_cgroup_available", lambda: [])
    monkeypatch.setattr(budget, "_physical_memory", lambda: budget.Limit(16 * 2**30, "physical memory (sysconf)"))
    assert budget.available().bytes == 16 * 2**30
    monkeypatch.setattr(budget, "_physical_memory", lambda: None)
    assert budget.available().bytes == math.inf


def test_limit_order_keyword_then_override_then_environment_then_machine(monkeypatch):
    monkeypatch.setattr(budget, "available", lambda: budget.Limit(100, "machine"))
    assert budget.limit().source == "machine"
    monkeypatch.setenv(budget.ENV, "2K")
    assert budget.limit() == budget.Limit(2000, budget.ENV)
    with budget.overridden(3000):
        assert budget.limit() == budget.Limit(3000, "--memory-limit")
        assert budget.limit(4000) == budget.Limit(4000, "memory_limit=")
    assert budget.limit().bytes == 2000   # the override ends with its block
    monkeypatch.setenv(budget.ENV, "none")
    assert budget.limit().bytes == math.inf


def test_a_malformed_environment_limit_is_a_clean_error(monkeypatch):
    monkeypatch.setenv(budget.ENV, "lots")
    with pytest.raises(densedsl.SpecError) as e:
        budget.limit()
    assert "E307" in str(e.value) and budget.ENV in str(e.value) and "'lots'" in str(e.value)


@pytest.mark.parametrize("text, value", [("16GiB", 16 * 2**30), ("500M", 500 * 10**6), ("none", math.inf),
                                         ("OFF", math.inf), ("1", 1)])
def test_parse_limit(text, value):
    assert budget.parse_limit(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "1e400", "lots", "", "nan"])
def test_parse_limit_refuses(text):
    with pytest.raises(ValueError):
        budget.parse_limit(text)


# --- what each command needs: the analysis' own figures ------------------------------------------

def test_needs_are_the_analysis_figures():
    a = analyze(densedsl.load(TINY).network)
    weights = (a.params + a.buffers) * 4
    assert budget.for_model(a).bytes == weights
    assert budget.for_weights_file(a, "writing").bytes == 2 * weights
    assert budget.for_onnx(a).bytes == 2 * weights + a.memory(2, "float32", "inference")
    assert budget.for_evaluation(a, batch=256).bytes == weights + a.memory(256, "float32", "inference")
    train = budget.for_training(a, batch=64, mode="efficient", optimizer="sgd")
    assert train.bytes == weights + 3 * a.params * 4 + a.memory(64, "float32", "efficient")
    unknown = budget.for_training(a, batch=64, mode="efficient")  # AdamW's figure, the larger
    assert unknown.bytes == weights + 4 * a.params * 4 + a.memory(64, "float32", "efficient")
    assert "--memory efficient" in budget.for_training(a, batch=64, mode="standard").advice
    assert "--memory efficient" not in train.advice


def test_the_error_states_the_figure_the_limit_and_the_overrides():
    a = analyze(densedsl.load(TINY).network)
    with pytest.raises(densedsl.SpecError) as e:
        budget.require(budget.for_training(a, batch=64, mode="standard"), a.network,
                       within=budget.Limit(1000, "test limit"))
    [diag] = e.value.diagnostics
    assert diag.code == "E307" and diag.span is not None
    assert "training tiny_digits at batch 64 (standard memory) needs about" in diag.message
    assert "1000 B this process can use (test limit)" in diag.message
    assert "--memory-limit SIZE" in diag.hint and budget.ENV in diag.hint
    budget.require(budget.for_model(a), a.network, within=budget.Limit(math.inf, "none"))  # no error


# --- the library ----------------------------------------------------------------------------------

def test_library_compile_refuses_before_building_and_can_be_overridden(monkeypatch):
    built = []
    original = compiler.DenseNet
    monkeypatch.setattr(compiler, "DenseNet", lambda *a, **k: built.append(1) or original(*a, **k))
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.compile(TINY, memory_limit=1000)
    assert "E307" in str(e.value) and "memory_limit=" in str(e.value) and built == []
    assert densedsl.compile(TINY, memory_limit=math.inf) is not None and built == [1]
    monkeypatch.setenv(budget.ENV, "1K")
    with pytest.raises(densedsl.SpecError, match="E307"):
        densedsl.compile(TINY)
    assert built == [1]


def test_library_compile_refuses_a_network_larger_than_the_machine(monkeypatch):
    # 5.95e9 parameters, which `check` accepts: unguarded, this allocates 22 GiB.
    monkeypatch.setattr(budget, "available", lambda: budget.Limit(16 * 2**30, "a 16 GiB machine"))
    monkeypatch.setattr(compiler, "DenseNet", lambda *a, **k: pytest.fail("built the model"))
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.compile(TINY, classes=70_000_000)
    assert "E307" in str(e.value) and "22.2 GiB" in str(e.value) and "(a 16 GiB machine)" in str(e.value)


# --- every command that allocates refuses first ----------------------------------------------------

@pytest.mark.parametrize("suffix", [".pt", ".onnx"])
def test_compile_refuses_before_building(tmp_path, capsys, no_model_built, suffix):
    out = tmp_path / f"m{suffix}"
    code, _, err = run(capsys, "compile", TINY, "-o", out, "--memory-limit", "10K")
    assert code == 1 and "error[E307]" in err and "more than the 9.77 KiB" in err
    assert "this process can use (--memory-limit)" in err and not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_compile_takes_the_limit_from_the_environment(tmp_path, capsys, monkeypatch, no_model_built):
    monkeypatch.setenv(budget.ENV, "10K")
    code, _, err = run(capsys, "compile", TINY, "-o", tmp_path / "m.pt")
    assert code == 1 and f"this process can use ({budget.ENV})" in err


def test_compile_memory_limit_none_lifts_the_environment_limit(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(budget.ENV, "10K")
    code, _, err = run(capsys, "compile", TINY, "-o", tmp_path / "m.pt", "--memory-limit", "none")
    assert code == 0, err
    assert (tmp_path / "m.pt").stat().st_size > 0


def test_compile_py_never_builds_the_model(tmp_path, capsys, monkeypatch, no_model_built):
    # The .py export is source text: even a 6e9-parameter network is written, at once, with no
    # memory to speak of (and under a 1-byte limit, which only allocating commands obey).
    monkeypatch.setenv(budget.ENV, "1")
    out = tmp_path / "m.py"
    code, _, err = run(capsys, "compile", TINY, *HUGE_HEAD, "-o", out)
    assert code == 0, err
    assert "5,950,064,560 parameters" in err
    assert "70000000" in out.read_text()


def test_compile_refuses_a_network_the_machine_cannot_hold(tmp_path, capsys, no_model_built, monkeypatch):
    monkeypatch.setattr(budget, "available", lambda: budget.Limit(16 * 2**30, "a 16 GiB machine"))
    code, _, err = run(capsys, "compile", TINY, *HUGE_HEAD, "-o", tmp_path / "m.pt")
    assert code == 1 and "E307" in err and "44.3 GiB" in err and "16 GiB" in err


def test_render_heatmap_refuses_before_reading_weights(tmp_path, capsys, no_model_built):
    # The weights file does not even exist: the guard comes first.
    code, _, err = run(capsys, "render", TINY, "--heatmap", "--weights", tmp_path / "absent.pt",
                       "-o", tmp_path / "h.png", "--memory-limit", "1K")
    assert code == 1 and "E307" in err and "reading the weights of tiny_digits" in err


def test_train_refuses_before_loading_data_or_building(tmp_path, capsys, monkeypatch, no_model_built):
    from densedsl.training import datasets

    def no_data(*args, **kwargs):
        raise AssertionError("the data set was loaded although the guard should have refused")
    monkeypatch.setattr(datasets, "load", no_data)
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", TINY, "--data", "digits", "--out", out, "--batch-size", "32",
                       "--memory", "efficient", "--memory-limit", "100K", "--no-progress", "--device", "cpu")
    assert code == 1 and "E307" in err
    assert "training tiny_digits at batch 32 (efficient memory)" in err
    assert not (out / "checkpoint.pt").exists()


def test_train_batch_size_scales_the_figure(tmp_path, capsys, no_model_built):
    # 10^8 images a step is 26.7 TiB of activations: refused on any machine, limit measured.
    code, _, err = run(capsys, "train", TINY, "--data", "digits", "--out", tmp_path / "run",
                       "--batch-size", "100000000", "--no-progress", "--device", "cpu")
    assert code == 1 and "E307" in err and "TiB" in err


def test_eval_refuses_a_checkpoint_before_building(tmp_path, capsys, monkeypatch):
    from densedsl.training import checkpoints
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", TINY, "--data", "synthetic:64", "--epochs", "1", "--out", run_dir,
                       "--batch-size", "32", "--no-progress", "--device", "cpu", "--threads", "1")
    assert code == 0, err

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built although the guard should have refused")
    monkeypatch.setattr(checkpoints, "model_and_spec", refuse)
    code, _, err = run(capsys, "eval", run_dir, "--memory-limit", "10K", "--device", "cpu")
    assert code == 1 and "E307" in err and "evaluating tiny_digits at batch 256" in err
    code, _, err = run(capsys, "train", TINY, "--data", "synthetic:64", "--epochs", "1", "--out", run_dir,
                       "--resume", "--no-progress", "--device", "cpu", "--memory-limit", "10K")
    assert code == 1 and "E307" in err and "training tiny_digits" in err


def test_on_cuda_the_gpu_holds_everything_and_the_host_the_weights(monkeypatch):
    import torch
    a = analyze(densedsl.load(TINY).network)
    need = budget.for_training(a, batch=64, mode="standard").bytes
    weights = budget.for_model(a).bytes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    free = {"gpu": need - 1}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["gpu"], 80 * 2**30))
    monkeypatch.setattr(budget, "available", lambda: budget.Limit(10 * 2**30, "host"))
    with pytest.raises(densedsl.SpecError) as e:
        budget.check_training(a.network, batch=64, device="auto")   # auto: CUDA when there is one
    assert "free memory of the CUDA device" in str(e.value)
    free["gpu"] = need
    budget.check_training(a.network, batch=64, device=torch.device("cuda"))
    monkeypatch.setattr(budget, "available", lambda: budget.Limit(weights - 1, "host"))
    with pytest.raises(densedsl.SpecError, match=r"building tiny_digits .*\(host\)"):
        budget.check_training(a.network, batch=64, device="cuda")


def test_digits_without_scikit_learn_is_e911(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    code, _, err = run(capsys, "train", TINY, "--data", "digits", "--out", tmp_path / "run", "--epochs", "1",
                       "--max-steps", "1", "--no-progress", "--device", "cpu")
    assert code == 1 and "error[E911]" in err and "scikit-learn" in err


def test_library_memory_limit_takes_sizes_and_refuses_nonsense():
    assert budget.limit("16GiB").bytes == 16 * 2**30 and budget.limit("none").bytes == math.inf
    for bad, error in (("lots", ValueError), (0, ValueError), (float("nan"), ValueError), (-5, ValueError),
                       (True, TypeError), ([1], TypeError)):
        with pytest.raises(error, match="memory_limit|not a size"):
            densedsl.compile(TINY, memory_limit=bad)
