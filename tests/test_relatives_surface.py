"""DenseNet's relatives on every surface (issue 22): `diff` and `explain` (text and JSON), the
E303 derivation of a block's channels, the language server's hover, and the property-test
strategies drawing the relatives' layer and transition choices. Each test fails when the code
it guards words a relative's block as DenseNet's (or not at all)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import densedsl
from densedsl.analysis.figures import analyze
from densedsl.cli import main
from densedsl.core.units import index_list
from densedsl.views import report

ROOT = Path(__file__).resolve().parent.parent


def _analysis(text: str):
    return analyze(densedsl.parse(text).network)


def _small(block: str) -> str:
    """A network of one 3-layer block written `block`, a transition and a head."""
    return (f"network s {{\n    input 3x16x16\n    stem {{\n        conv 8 kernel=3 padding=1\n    }}\n"
            f"    dense layers=3 growth=4 {block}\n    transition compression=0.5\n    head classes=3\n}}\n")


def _row(d: report.Diff, name: str) -> report.DiffRow:
    return next(r for r in d.rows if r.name == name)


# --- index lists --------------------------------------------------------------------------------

def test_index_lists_shorten_runs_and_long_lists():
    assert index_list([4, 3, 2, 1, 0]) == "4…0"
    assert index_list([0, 1, 2, 5, 4]) == "0…2, 5, 4"
    assert index_list([4, 3, 1]) == "4, 3, 1"
    assert index_list(list(range(1, 18, 2)) + [18], "x", "maps") == \
        "x1, x3, x5, x7, x9, x11, …, x17, x18 (10 maps)"


# --- diff ---------------------------------------------------------------------------------------

def test_diff_shows_reads_that_differ_where_every_figure_agrees():
    """Only the concatenation order differs: same shapes, params and MACs, so the stage figures
    alone said "no stage changed"."""
    old = _analysis(_small("links=[[0], [1, 0], [2, 1, 0]]"))
    new = _analysis(_small(""))
    assert old.figures() == new.figures()
    d = report.diff(old, new)
    text = d.text()
    assert "denseblock1: layer 2 reads [1, 0] → [0, 1], layer 3 reads [2…0] → [0…2]" in text
    assert "no stage changed" not in text
    data = d.as_json()
    row = next(r for r in data["stages"] if r["name"] == "denseblock1")
    assert row["tables"]["reads"] == [{"layer": 2, "old": [1, 0], "new": [0, 1]},
                                      {"layer": 3, "old": [2, 1, 0], "new": [0, 1, 2]}]
    assert row["tables"]["widths"] == [] and row["tables"]["emits"] is None
    assert next(r for r in data["stages"] if r["name"] == "transition1")["tables"] is None


def test_diff_shows_emits_and_widths_that_differ():
    d = report.diff(_analysis(_small("emit=[0, 3] widths=[4, 8, 4]")),
                    _analysis(_small("emit=[3, 0] widths=[4, 4, 8]")))
    changes = _row(d, "denseblock1").changes
    assert "layer 2 width 8 → 4" in changes and "layer 3 width 4 → 8" in changes
    assert "emits x0, x3 → x3, x0" in changes
    tables = next(r for r in d.as_json()["stages"] if r["name"] == "denseblock1")["tables"]
    assert tables["widths"] == [{"layer": 2, "old": 8, "new": 4}, {"layer": 3, "old": 4, "new": 8}]
    assert tables["emits"] == {"old": [0, 3], "new": [3, 0]}
    assert d.as_json()["stages"][1]["new"]["emits"] == [3, 0]


def test_diff_summarises_many_differing_layers_and_counts_connections():
    sparse = densedsl.load(ROOT / "specs" / "sparsenet.dense")
    old = analyze(sparse.network)
    new = analyze(sparse.with_params(links="all", emit="all").network)
    changes = _row(report.diff(old, new), "denseblock3").changes
    assert changes[:3] == ["94 → 300 connections",
                           "reads differ in 23 of 24 layers (2…24; layer 2: [1, 0] → [0, 1])",
                           "emits x24, x23, x21, x17, x9 → x0…x24"]
    # a layer-count change of DenseNet blocks is the layers and connections, no read or emit lines
    a121 = analyze(densedsl.load(ROOT / "specs" / "densenet121.dense").network)
    a169 = analyze(densedsl.load(ROOT / "specs" / "densenet169.dense").network)
    changes = _row(report.diff(a121, a169), "denseblock3").changes
    assert changes[:2] == ["24 → 32 layers", "300 → 528 connections"]
    assert not any("reads" in c or "emits" in c or "width" in c for c in changes)


def test_diff_of_a_densenet_block_with_a_sparse_one_builds_no_densenet_row(monkeypatch):
    """DenseNet's reads are never materialised (L(L+1)/2 of them): against a chain only the rows
    of equal length are built, so a 2,000-layer block costs the chain's 2,000 reads."""
    from densedsl.ir.connectivity import Table, table
    from densedsl.language.network import DenseBlock
    from densedsl.views.diff import compare
    dense, chain = (table(DenseBlock(index=1, layers=2000, growth=4, links=rule))
                    for rule in ("all", "chain"))
    built = []
    real = Table.reads_of
    monkeypatch.setattr(Table, "reads_of", lambda self, j: built.append(len(r := real(self, j))) or r)
    d = compare(chain, dense, 4, 4)
    assert d.reads == tuple(range(2, 2001)) and d.layers == 2000
    assert sum(built) <= 3 * 2000


def test_cli_diff_of_two_files_that_differ_only_in_links(tmp_path, capsys):
    a, b = tmp_path / "a.dense", tmp_path / "b.dense"
    a.write_text(_small("links=log emit=log"))
    b.write_text(_small("links=chain emit=log"))
    assert main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert ("denseblock1: 5 → 3 connections, layer 2 reads [1, 0] → [1], "
            "layer 3 reads [2, 1] → [2],") in out
    assert main(["diff", str(a), str(b), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    row = next(r for r in data["stages"] if r["name"] == "denseblock1")
    assert row["tables"]["reads"] == [{"layer": 2, "old": [1, 0], "new": [1]},
                                      {"layer": 3, "old": [2, 1], "new": [2]}]
    assert row["old"]["connections"] == 5 and row["new"]["connections"] == 3


# --- explain ------------------------------------------------------------------------------------

def test_explain_json_states_the_table_for_relatives_and_densenet_alike():
    hardnet = analyze(densedsl.load(ROOT / "specs" / "hardnet68.dense").network)
    data = report.explain(hardnet, 1, 8).as_json()
    assert data["block"]["emits"] == [1, 3, 5, 7, 8]
    assert data["block"]["widths"] == [14, 24, 14, 40, 14, 24, 14, 68]
    (layer,) = data["layers"]
    assert layer["reads"] == [7, 6, 4, 0] and layer["width"] == 68
    assert [i["map"].split(".")[-1] for i in layer["inputs"]] == ["x7", "x6", "x4", "x0"]
    dn = analyze(densedsl.load(ROOT / "specs" / "densenet121.dense").network)
    data = report.explain(dn, 2, 3).as_json()
    assert data["block"]["emits"] == list(range(13)) and data["block"]["widths"] == [32] * 12
    assert data["layers"][0]["reads"] == [0, 1, 2] and data["layers"][0]["width"] == 32


def test_explain_text_states_each_layers_width_where_the_table_is_not_densenets(capsys):
    assert main(["explain", "specs/hardnet68.dense", "--block", "2", "--layer", "16"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("denseblock2: 16 layers, widths [16, 28, 16, 46, 16, 28, …, 16, 134 "
                          "(16 layers)], 128 channels in, emits x1, x3, x5, x7, x9, x11, …, x15, x16 "
                          "(9 maps) = 262 channels")
    assert "denselayer16 concatenates 5 maps, 296 channels, and adds 134 channels:" in out
    assert main(["explain", "specs/densenet121.dense", "--block", "2", "--layer", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["reads"] == [0, 1, 2]
    text = report.explain(analyze(densedsl.load(ROOT / "specs" / "densenet121.dense").network), 2, 3).text()
    assert "denselayer3 concatenates 3 maps, 192 channels:" in text and "adds" not in text


def test_summary_json_states_each_blocks_emits_and_widths():
    a = analyze(densedsl.load(ROOT / "specs" / "sparsenet.dense").network)
    block4 = report.summary(a).as_json()["stages"][-2]
    assert block4["name"] == "denseblock4" and block4["emits"] == [16, 15, 13, 9, 1]
    assert block4["widths"] == [32] * 16


# --- the E303 derivation ------------------------------------------------------------------------

def _channels_message(path: str, drop_last_transition: bool) -> str:
    lines = (ROOT / path).read_text().splitlines()
    if drop_last_transition:  # so the network ends on a block, whose channels the message derives
        del lines[max(i for i, line in enumerate(lines) if line.strip().startswith("transition"))]
    text = "\n".join(line for line in lines if not line.strip().startswith("expect"))
    text = text[:text.rindex("}")] + "    expect channels=1\n}\n"
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.analyze(densedsl.parse(text, source=path))
    (message,) = [d.message for d in e.value.diagnostics]
    return message


def _adds_up(message: str) -> None:
    """The derivation's arithmetic gives the figure it explains."""
    got, terms = re.search(r"gives ([\d,]+) = ([^(]+) \(", message).groups()
    total = sum(int(t.split("·")[0]) * int(t.split("·")[1]) if "·" in t else int(t)
                for t in terms.replace(",", "").split(" + "))
    assert total == int(got.replace(",", "")), message


@pytest.mark.parametrize(("path", "drop", "derivation"), [
    ("specs/hardnet68.dense", True,
     "782 = 2·160 + 1·462 (denseblock5: 640 in, emits x1, x3, x4; widths 160, 272, 160, 462)"),
    ("specs/vovnet39.dense", True,
     "2,144 = 1,024 + 5·224 (denseblock6: 1,024 in, emits x0…x5; each layer adds 224)"),
    ("specs/sparsenet.dense", False,
     "160 = 5·32 (denseblock4: 80 in, emits x16, x15, x13, x9, x1; each layer adds 32)"),
    ("specs/densenet121.dense", False, "1,024 = 512 + 16·32 (denseblock4: 512 in, 16 layers of growth 32)"),
])
def test_a_blocks_channels_are_derived_from_its_table(path, drop, derivation):
    message = _channels_message(path, drop)
    assert message.endswith(f"gives {derivation}"), message
    _adds_up(message)


# --- the language server's hover ----------------------------------------------------------------

def test_hovering_a_relatives_block_shows_its_connections_emits_and_widths():
    pytest.importorskip("lsprotocol")
    from lsprotocol import types

    from densedsl.lsp import features
    from densedsl.lsp.document import analyze_text

    def hover(path: str, line_text: str) -> str:
        text = (ROOT / path).read_text()
        snap = analyze_text(text, path)
        pos = features.Positions(snap.source, len)
        line = text.split("\n").index(line_text)
        at = types.Position(line=line, character=line_text.index("dense") + 2)
        return features.hover(snap, pos, at).contents.value

    text = hover("specs/hardnet68.dense", "    dense layers=8 growth=14")
    assert "15 dense connections" in text
    assert "emits x1, x3, x5, x7, x8 (124 channels) · widths 14, 24, 14, 40, 14, 24, 14, 68" in text
    sparse = hover("specs/sparsenet.dense", "        dense layers=n")  # the loop's four blocks
    assert sparse.count("emits ") == 4 and "emits x16, x15, x13, x9, x1 (160 channels)" in sparse
    assert "widths" not in sparse.replace("`widths", "")  # equal widths: the growth says it
    assert "emits" not in hover("specs/densenet121.dense", "    dense layers=24")


# --- the property-test strategies ---------------------------------------------------------------

@pytest.mark.parametrize(("choice", "holds"), [
    ("separable=true layers", lambda n: any(b.separable and b.order == "post" for b in n.blocks)),
    ("pool=depthwise transitions",
     lambda n: any(t.pool and t.pool.mode == "depthwise" for t in n.transitions)),
    ("ceil=true transition pools", lambda n: any(t.pool and t.pool.ceil for t in n.transitions)),
    ("order=post transitions",
     lambda n: any(t.order == "post" and t.activation != "relu" for t in n.transitions)),
    ("ceil=true stem pools", lambda n: any(getattr(op, "ceil", False) for op in n.stem.ops)),
    ("grouped stem convs", lambda n: any(getattr(op, "groups", 1) > 1 for op in n.stem.ops)),
])
def test_networks_draw_the_relatives_layer_and_transition_choices(choice, holds):
    """So every property test over `networks()` (the model against the analysis, spec-text and
    family round trips, diagrams) covers them."""
    from hypothesis import HealthCheck, Phase, find, settings

    from densedsl.testing.strategies import networks
    # the first drawn network that has it (unshrunk: finding it is the point, not its minimum)
    found = find(networks(), holds, settings=settings(
        max_examples=500, database=None, phases=[Phase.generate], derandomize=True,
        suppress_health_check=list(HealthCheck)))
    assert holds(found), choice
    # the printer writes it: the text resolves to the same network
    assert densedsl.parse(densedsl.testing.spec_text(found)).network == found


def test_the_relatives_page_quotes_what_diff_and_explain_print(capsys):
    page = (ROOT / "docs" / "relatives.md").read_text()
    block = page.split("state the tables in words", 1)[1].split("```\n")[1]
    for command in block.split("$ densedsl ")[1:]:
        argv, *expected = command.rstrip("\n").split("\n")
        assert main(argv.split()) == 0
        out = capsys.readouterr().out.splitlines()
        assert all(line in out for line in expected), (argv, expected)
