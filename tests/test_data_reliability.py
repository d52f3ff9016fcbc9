"""Issue 24, the data side: sweep memory, CSV bounds, pipeline records, synthetic vectors, the
float32 range of optimizer settings, the worker cap and the memory guard's training figure."""

from __future__ import annotations

import gc
import json
import math

import pytest

import densedsl
from densedsl.analysis import Analysis
from densedsl.core.diagnostics import SpecError
from densedsl.training import tabular, tabular_record
from densedsl.views import report


def _codes(error: SpecError) -> list[str]:
    return [x.code.code for x in error.diagnostics]


# --- 1. sweep keeps figures, not analyses ------------------------------------------------------

def _live_analyses() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is Analysis)


def test_a_sweep_holds_one_analysis_at_a_time_and_keeps_none(monkeypatch):
    spec = densedsl.load("specs/tiny_digits.dense")
    before = _live_analyses()
    alive_at_each_point = []
    real = report.analyze

    def counting(network, **kwargs):
        alive_at_each_point.append(_live_analyses() - before)
        return real(network, **kwargs)

    monkeypatch.setattr(report, "analyze", counting)
    s = report.sweep(lambda v: spec.with_params(**v).network, {"growth": ["4", "6", "8", "10"]})
    assert alive_at_each_point == [0, 0, 0, 0]      # the previous point's analysis is gone
    assert _live_analyses() == before               # and the report holds none
    assert [r.analysis.params for r in s.rows] == sorted(r.analysis.params for r in s.rows)
    assert s.as_json()["rows"][0]["params"] == s.rows[0].analysis.params
    assert "params" in s.text()


# --- 2. CSV: linear in columns, header cells counted, bounded lines, streamed ------------------

class _Name(str):
    """A column name that counts how often it is compared with another."""

    compared = 0

    def __eq__(self, other):
        _Name.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_fitting_and_encoding_compare_each_column_name_a_bounded_number_of_times():
    columns = 400
    header = tuple(_Name(f"c{j}") for j in range(columns)) + (_Name("y"),)
    rows = [[str((i * j) % 7) for j in range(columns)] + [str(i)] for i in range(5)]
    table = tabular.Table(None, header, rows, list(range(2, 7)))
    _Name.compared = 0
    pipeline = tabular.fit(table, [table], "y", "regression")
    features = pipeline.features(table)
    assert features.shape == (5, columns)
    # looking every name up in the header compares ~columns²/2 = 80,000 times
    assert _Name.compared <= 10 * columns, _Name.compared


def test_header_cells_count_against_the_cell_limit(monkeypatch):
    monkeypatch.setattr(tabular, "MAX_CELLS", 10)
    with pytest.raises(SpecError) as e:
        tabular._parse("a,b,c,d,e,f\n1,2,3,4,5,6\n", None)  # 6 row cells, 12 with the header
    assert _codes(e.value) == ["E908"] and "more than 10 cells" in str(e.value)


def test_a_header_wider_than_the_cell_limit_is_refused_before_it_is_split(tmp_path, monkeypatch):
    monkeypatch.setattr(tabular, "MAX_CELLS", 100)
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{j}" for j in range(1000)) + "\n" + ",".join("1" * 1000) + "\n")
    split = []
    real_reader = tabular.csv.reader
    monkeypatch.setattr(tabular.csv, "reader", lambda lines, **kw: real_reader(
        (split.append(line) or line for line in lines), **kw))
    with pytest.raises(SpecError) as e:
        tabular.read_csv(path)
    assert _codes(e.value) == ["E908"] and "line 1 holds 999 commas" in str(e.value)
    assert split == []                               # the parser never saw the line


def test_a_line_longer_than_the_line_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(tabular, "MAX_LINE_BYTES", 100)
    path = tmp_path / "long.csv"
    path.write_text("x,y\n1,2\n" + "3," + "4" * 200 + "\n")
    with pytest.raises(SpecError) as e:
        tabular.read_csv(path)
    assert _codes(e.value) == ["E908"] and "line 3 is longer than" in str(e.value)


def test_a_csv_file_is_streamed_never_read_whole(tmp_path, monkeypatch):
    path = tmp_path / "rows.csv"
    line = "1.5,abc,2\n"
    path.write_text("x,c,y\n" + line * 2000)
    largest = []
    real_open = open

    class Watched:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            method = getattr(self.f, name)
            if name not in ("read", "readline", "readlines", "__iter__", "__next__"):
                return method

            def watched(*args):
                out = method(*args)
                largest.append(len(out) if isinstance(out, (bytes, str)) else sum(map(len, out)))
                return out
            return watched

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def __iter__(self):
            return iter(self.readline, b"")

    monkeypatch.setattr(tabular, "open", lambda *a, **k: Watched(real_open(*a, **k)), raising=False)
    table = tabular.read_csv(path)
    assert len(table.rows) == 2000 and table.header == ("x", "c", "y")
    assert max(largest) <= len(line)                 # a line at a time, not 20 kB at once


def test_streamed_reading_keeps_line_numbers_bom_and_old_mac_line_ends(tmp_path):
    path = tmp_path / "mac.csv"
    path.write_bytes(b"\xef\xbb\xbfx,y\r1,2\r3,4\r")
    table = tabular.read_csv(path)
    assert table.header == ("x", "y") and table.rows == [["1", "2"], ["3", "4"]] and table.lines == [2, 3]
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"x,y\r\n1,2\r\n\"a\nb\",3\r\n4,\xff\r\n")
    with pytest.raises(SpecError) as e:
        tabular.read_csv(bad)
    assert "line 5 is not UTF-8 text (byte 0xff)" in str(e.value)


# --- 3. pipeline records -----------------------------------------------------------------------

def _record(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x,c,y\n1,a,10\n2,b,20\n4,a,30\n")
    table = tabular.read_csv(path)
    return tabular.fit(table, [table], "y", "regression").record(), path


def test_a_fitted_pipeline_record_has_no_problems(tmp_path):
    record, path = _record(tmp_path)
    assert tabular_record.record_problems(record) == []
    exported = json.loads(json.dumps(tabular_record.exported(tabular.Pipeline.from_record(record), "csv:t")))
    assert tabular_record.encode_csv(exported, path).shape == (3, 4)


@pytest.mark.parametrize("edit, words", [
    (lambda r: r.pop("columns"), "lacks 'columns'"),
    (lambda r: r["columns"][0].pop("std"), "'columns[0]' lacks 'std'"),
    (lambda r: r["columns"].__setitem__(0, "x"), "'columns[0]' must be an object"),
    (lambda r: r["columns"][0].update(std=0), "'columns[0].std' must be a finite number > 0"),
    (lambda r: r["columns"][0].update(mean=math.nan), "'columns[0].mean' must be a finite number"),
    (lambda r: r["columns"][0].update(mean=10**400), "'columns[0].mean' must be a finite number"),
    (lambda r: r.update(target_std=-1.0), "'target_std' must be a finite number > 0"),
    (lambda r: r["columns"][1].update(categories=["a", "a"]), "'columns[1].categories'"),
    (lambda r: r["columns"][0].update(name="y"), "holds the target 'y' as a feature"),
    (lambda r: r["columns"].append(dict(r["columns"][0])), "names a column twice"),
])
def test_encode_csv_refuses_a_record_fit_could_not_have_written(tmp_path, edit, words):
    record, path = _record(tmp_path)
    edit(record)
    assert any(words in p for p in tabular_record.record_problems(record)), tabular_record.record_problems(record)
    with pytest.raises(SpecError) as e:
        tabular_record.encode_csv({"pipeline": record}, path)
    assert _codes(e.value) == ["E908"] and "invalid tabular pipeline" in str(e.value)


def test_a_value_that_standardises_beyond_float32_is_refused(tmp_path):
    record, _ = _record(tmp_path)
    far = tmp_path / "far.csv"
    far.write_text("x,c,y\n1,a,10\n1e300,b,20\n")
    with pytest.raises(SpecError) as e:
        tabular_record.encode_csv(record, far)
    assert _codes(e.value) == ["E908"] and "line 3: column 'x' standardises to" in str(e.value)


# --- 5. settings past float32's range, and the worker cap ---------------------------------------

TINY = "specs/tiny_digits.dense"


@pytest.mark.parametrize("option, value, words", [
    ("--lr", "3.5e38", "lr must be at most 10000"),
    ("--head-lr", "1e308", "head lr must be at most 10000"),
    ("--weight-decay", "1e308", "weight decay must be at most 10000"),
])
def test_settings_that_overflow_float32_are_refused_before_any_work(tmp_path, capsys, option, value, words):
    from densedsl.cli import main
    code = main(["train", TINY, "--data", "synthetic:16", option, value, "--out", str(tmp_path / "r"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "error[E105]" in err and words in err, err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_the_library_refuses_them_too():
    from densedsl.training.config import check_settings
    for key, value, words in [("gamma", 1e39, "gamma must be within float32's range"),
                              ("grad_clip", 1e300, "grad clip must be within float32's range"),
                              ("lr", 1e5, "lr must be at most 10000")]:
        with pytest.raises(SpecError) as e:
            check_settings({key: value}, None)
        assert _codes(e.value) == ["E105"] and words in str(e.value)
    check_settings({"lr": 1e4, "weight_decay": 0.5, "gamma": 0.1, "grad_clip": 1e30}, None)  # no error


def test_workers_are_capped_by_the_cpus(tmp_path, capsys, monkeypatch):
    from densedsl.cli import main
    from densedsl.training import config as train_config
    monkeypatch.setattr(train_config.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert train_config.max_workers() == 8
    code = main(["train", TINY, "--data", "synthetic:16", "--workers", "1000", "--out", str(tmp_path / "r"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "error[E105]" in err and "workers must be at most 8" in err, err
    assert main(["eval", str(tmp_path / "r"), "--workers", "9"]) == 1
    assert "workers must be at most 8" in capsys.readouterr().err


# --- 6. the memory guard: the optimizer step's real figure, and RLIMIT_AS ----------------------

def _peak_step_bytes(optimizer) -> int:
    """The most bytes of tensors that `optimizer.step()` allocates and holds at once (momentum
    buffers, moments and temporaries), tracked tensor by tensor as torch dispatches them."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    live = {"now": 0, "peak": 0}

    def freed(n: int) -> None:
        live["now"] -= n

    class Track(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                    n = t.untyped_storage().nbytes()
                    live["now"] += n
                    live["peak"] = max(live["peak"], live["now"])
                    weakref.finalize(t, freed, n)
            return out

    with Track():
        optimizer.step()
    return live["peak"]


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_the_training_figure_covers_what_the_optimizer_step_allocates(kind):
    import torch

    from densedsl.analysis import analyze, budget
    from densedsl.nn.build import build_model
    net = densedsl.load("specs/d2l_flux_mlp.dense", features=256).network  # weight-heavy: 1.3 M params
    a = analyze(net)
    model = build_model(net)
    params = list(model.parameters())
    for foreach in (False, True):   # torch's default on the CPU, and on CUDA
        optimizer = (torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, foreach=foreach)
                     if kind == "sgd" else torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, foreach=foreach))
        model(torch.randn(4, 256)).square().mean().backward()
        measured = budget.weights_bytes(a) + a.params * 4 + _peak_step_bytes(optimizer)  # + gradients
        [(label, counted), _activations] = budget.for_training(a, batch=4, mode="standard", optimizer=kind).parts
        assert counted >= measured, (foreach, counted / measured)
        if foreach:  # every temporary at once: the figure is then (about) exact, not only a bound
            assert counted <= 1.05 * measured, counted / measured
        model.zero_grad(set_to_none=True)


def test_an_address_space_limit_bounds_what_the_guard_allows(monkeypatch, tmp_path):
    import resource

    from densedsl.analysis import budget
    statm = tmp_path / "statm"
    statm.write_text(f"{2**30 // 4096} 100 0 0 0 0 0\n")       # 1 GiB of address space in use
    monkeypatch.setattr(resource, "getrlimit", lambda which: (3 * 2**30, resource.RLIM_INFINITY)
                        if which == resource.RLIMIT_AS else (resource.RLIM_INFINITY,) * 2)
    measure = budget._address_space_available
    limit = measure(str(statm))
    assert limit.bytes == 2 * 2**30 and "RLIMIT_AS" in limit.source
    monkeypatch.setattr(budget, "_address_space_available", lambda: limit)
    monkeypatch.setattr(budget, "_meminfo_available", lambda: budget.Limit(64 * 2**30, "meminfo"))
    monkeypatch.setattr(budget, "_cgroup_available", lambda: [])
    assert budget.available() == limit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY,) * 2)
    assert measure(str(statm)) is None


# --- 4. synthetic data for a vector input ------------------------------------------------------

def test_synthetic_rows_for_a_vector_input_regression_and_classification():
    from densedsl.training import datasets
    reg = datasets.load("synthetic:40", shape=(10,), classes=1, task="regression")
    assert reg.tabular and reg.task == "regression" and reg.shape == (10,) and reg.classes == 1
    assert len(reg.train) == 40 and len(reg.test) == 10 and reg.train.targets.dtype.is_floating_point
    assert tabular_record.record_problems(reg.pipeline.record()) == []
    cls = datasets.load("synthetic:40", shape=(6,), classes=3, task="classification")
    assert cls.classes == 3 and set(cls.train.targets.tolist()) <= {0, 1, 2} and cls.pipeline.width == 6


@pytest.mark.parametrize("extra, words", [((), "test RMSE"), (("--set", "classes=3"), "test accuracy")])
def test_train_on_synthetic_data_with_a_vector_input(tmp_path, capsys, extra, words):
    from densedsl.cli import main
    code = main(["train", "specs/d2l_flux_mlp.dense", "--data", "synthetic:64", *extra, "--out",
                 str(tmp_path / "r"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert words in out and "AdamW" in out and "rows of 10 features" in out
