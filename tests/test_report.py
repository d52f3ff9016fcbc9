"""summary, diff, explain and sweep: data, text, JSON and the CLI commands."""

from __future__ import annotations

import json

import pytest

import densedsl
from densedsl.analysis.figures import analyze
from densedsl.cli import main
from densedsl.core.units import parse_quantity, si
from densedsl.views import report


@pytest.fixture(scope="module")
def a121():
    return analyze(densedsl.load("specs/densenet121.dense").network)


def test_si_and_quantities():
    assert si(7_978_856) == "7.98 M"
    assert si(5_668_323_328, "FLOPs") == "5.67 GFLOPs"
    assert si(535) == "535"
    assert parse_quantity("1M") == 10**6
    assert parse_quantity("80GiB") == 80 * 2**30
    assert parse_quantity("7_978_856") == 7_978_856
    with pytest.raises(ValueError):
        parse_quantity("lots")


def test_summary_rows_and_text(a121):
    s = report.summary(a121)
    assert [r.name for r in s.rows][:3] == ["stem", "denseblock1", "transition1"]
    text = s.text()
    assert "7,978,856" in text and "2.83 G" in text and "connections 535" in text
    assert "min input 29x29" in text
    layers = report.summary(a121, layers=True)
    assert sum(r.params for r in layers.rows if r.level == 1) == a121.params
    assert "denseblock3.denselayer24" in [r.name for r in layers.rows]


def test_summary_json_schema(a121):
    data = report.summary(a121, batch=8, dtype="float16").as_json()
    assert data["schema"] == 1 and data["report"] == "summary"
    assert data["totals"]["params"] == 7_978_856
    assert data["totals"]["memory"]["standard"] == a121.memory(8, "float16")
    assert data["totals"]["min_input_size"] == {"eval": 29, "train": 61}
    assert data["stages"][1]["connections"] == 21
    json.dumps(data)


def test_diff_reports_layers_and_params(a121):
    a169 = analyze(densedsl.load("specs/densenet169.dense").network)
    text = report.diff(a121, a169).text()
    assert "denseblock3: 24 → 32 layers" in text
    assert "params" in text and "+6.17 M" in text
    data = report.diff(a121, a169).as_json()
    assert data["totals"]["params"] == {"old": 7_978_856, "new": 14_149_480, "delta": 6_170_624}


def test_explain_reads_the_in_edges(a121):
    e = report.explain(a121, 2, 3)
    (layer,) = e.layers
    assert layer.in_channels == 192
    assert [(i.map, i.channels, i.made_by) for i in layer.inputs] == [
        ("denseblock2.x0", 128, "transition1.pool"), ("denseblock2.x1", 32, "denselayer1.conv2"),
        ("denseblock2.x2", 32, "denselayer2.conv2")]
    assert "dense layers=12" in e.text()
    with pytest.raises(ValueError):
        report.explain(a121, 7)


def test_sweep_rows_errors_budgets_and_sort():
    spec = densedsl.load("specs/densenet_bc_cifar.dense")
    s = report.sweep(lambda v: spec.with_params(**v).network,
                     {"growth": ["12", "24"], "depth": ["100", "101", "250"]},
                     max_params=10**7, sort="params")
    ok = [r for r in s.rows if r.ok]
    assert [r.analysis.params for r in ok] == sorted(r.analysis.params for r in ok)
    assert ok[0].analysis.params == 769_162
    assert all(r.analysis.params <= 10**7 for r in ok)
    assert s.excluded == 1                                   # growth 24, depth 250: 15.3 M
    bad = [r for r in s.rows if not r.ok]
    assert len(bad) == 2 and all(r.errors for r in bad)
    assert s.as_json()["rows"][-1]["ok"] is False


def test_cli_summary_json_and_input(capsys):
    assert main(["summary", "specs/densenet121.dense", "--json", "--input", "3x64x64"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_shape"] == [3, 64, 64] and data["totals"]["params"] == 7_978_856


def test_cli_diff_with_set(capsys):
    assert main(["diff", "specs/densenet_bc_cifar.dense", "--set", "depth=190", "growth=40"]) == 0
    out = capsys.readouterr().out
    assert "denseblock1: 16 → 31 layers, 12 → 40 growth" in out and "25,624,430" in out


def test_cli_explain_and_sweep(capsys):
    assert main(["explain", "specs/tiny_digits.dense", "--block", "1"]) == 0
    assert "denselayer4 concatenates 4 maps" in capsys.readouterr().out
    assert main(["sweep", "specs/densenet_cifar.dense", "--grid", "growth=12,24", "depth=40,41",
                 "--max-params", "2M", "--sort", "params"]) == 0
    out = capsys.readouterr().out
    assert "1,019,722" in out and "E106" in out


def test_sweep_refuses_a_grid_too_large_before_analysing(capsys, monkeypatch):
    # 25 x 24 = 600 points > 500; no point may be analysed first
    monkeypatch.setattr(report, "analyze", lambda *a, **k: pytest.fail("analysed a point"))
    growth = ",".join(str(g) for g in range(1, 26))
    depth = ",".join(str(40 + 6 * i) for i in range(24))
    assert main(["sweep", "specs/densenet_cifar.dense", "--grid", f"growth={growth}", f"depth={depth}"]) == 2
    assert "600 points" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at most 500"):
        report.sweep(lambda v: None, {"a": [str(i) for i in range(501)]})


def test_cli_limits(capsys):
    assert main(["summary", "specs/densenet121.dense", "--max-params", "1M"]) == 1
    assert "E301" in capsys.readouterr().err


SMALL_WITH_BOTTLENECK = """network a {
    input 3x32x32
    stem {
        conv 16 kernel=3 padding=1
    }
    dense layers=2 growth=4 bottleneck=4
    head classes=10
}
"""


def test_diff_spells_no_bottleneck_as_the_language_does():
    """`bottleneck=off`, not Python's None (issue 14)."""
    from densedsl.language.spec import parse
    from densedsl.views.report import diff
    old = analyze(parse(SMALL_WITH_BOTTLENECK).network)
    new = analyze(parse(SMALL_WITH_BOTTLENECK.replace("bottleneck=4", "bottleneck=off")).network)
    text = diff(old, new).text()
    assert "4 → off bottleneck" in text and "None" not in text


SMALL_OPS = """network n {
    input 3x16x16
    stem { conv 16 kernel=3 padding=1 }
    dense layers=3 growth=8 bottleneck=4
    transition compression=0.5
    dense layers=2 growth=8
    head classes=10
}
"""


def test_diff_names_ops_that_change_where_every_figure_agrees():
    """An activation, a pool and a dropout rate change no parameter, MAC or shape: the figures
    alone said "no stage changed" (HarDNet-68 `--set act=relu` printed only a memory total)."""
    old = analyze(densedsl.parse(SMALL_OPS).network)
    new = analyze(densedsl.parse(SMALL_OPS.replace("bottleneck=4", "bottleneck=4 activation=silu")
                                 .replace("compression=0.5", "compression=0.5 pool=max")
                                 .replace("layers=2 growth=8", "layers=2 growth=8 dropout=0.2")).network)
    assert {k: v for k, v in old.figures().items()} == {k: v for k, v in new.figures().items()}
    d = report.diff(old, new)
    text = d.text()
    assert "denseblock1: ops BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 → BN-SiLU-Conv1x1-BN-SiLU-Conv3x3" in text
    assert "transition1: ops BN-ReLU-Conv1x1-AvgPool2x2/2 → BN-ReLU-Conv1x1-MaxPool2x2/2" in text
    assert "denseblock2: ops BN-ReLU-Conv3x3 → BN-ReLU-Conv3x3-Dropout(0.2)" in text
    assert "no stage changed" not in text and "stem" not in text and "head" not in text
    row = next(r for r in d.as_json()["stages"] if r["name"] == "denseblock2")
    assert row["changes"] == ["ops BN-ReLU-Conv3x3 → BN-ReLU-Conv3x3-Dropout(0.2)"]


def test_diff_leaves_channel_counts_to_growth_and_counts_layers_whose_ops_differ():
    """A growth change is the row's `growth` (and params) change, not an ops change too; layers
    that differ in some layers only are counted, with the first as example."""
    old = analyze(densedsl.parse(SMALL_OPS).network)
    new = analyze(densedsl.parse(SMALL_OPS.replace("layers=3 growth=8", "layers=3 growth=12")).network)
    assert not any(c.startswith("ops") for r in report.diff(old, new).rows for c in r.changes)
    from densedsl.views.diff import op_changes
    assert op_changes(("A-B", "A-B", "A-B"), ("A-B", "A-C", "A-C")) == \
        ["ops differ in 2 of 3 layers (2, 3; layer 2: A-B → A-C)"]
    assert op_changes(("A",), ("A", "B")) == []  # an added layer is the row's layer count
