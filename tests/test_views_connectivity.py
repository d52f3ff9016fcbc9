"""The views read each block's connectivity table (issue 22): the layers view, the matrix view,
explain, the heatmap and the CIO figure, for DenseNet, SparseNet (`links=log emit=log`) and
HarDNet (`links=harmonic emit=odd width_factor=1.7`) blocks."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ROOT
from test_diagram import _attr, parse_dot

import densedsl
from densedsl.cli import main
from densedsl.ir.connectivity import table
from densedsl.views import diagram
from densedsl.views.report import explain, summary

RULES = {
    "densenet": "",
    "sparsenet": "links=log emit=log",
    "hardnet": "links=harmonic emit=odd width_factor=1.7",
}


def _spec(rule: str, layers: int = 8, growth: int = 14) -> densedsl.Spec:
    return densedsl.parse(f"""network n {{
    input 3x16x16
    stem {{
        conv 16 kernel=3 padding=1
    }}
    dense layers={layers} growth={growth} {rule}
    head classes=10
}}
""")


def _analysis(rule: str, **kw) -> densedsl.Analysis:
    return densedsl.analyze(_spec(rule, **kw))


def _table(a):
    return next(x.table for x in a.lowered if getattr(x, "name", "") == "denseblock1")


# --- the matrix view ---------------------------------------------------------------------------

def _cells(source: str, kind: str) -> list[tuple[int, int]]:
    """(layer, s) of each read cell, or (0, s) of each emit cell, from the cells' tooltips."""
    if kind == "read":
        return [(int(m[0]), int(m[1])) for m in re.findall(r'TOOLTIP="layer (\d+) reads x(\d+) ', source)]
    return [(0, int(s)) for s in re.findall(r'TOOLTIP="the block emits x(\d+) ', source)]


@pytest.mark.parametrize("family", RULES)
def test_matrix_draws_exactly_the_table(family):
    a = _analysis(RULES[family])
    t = _table(a)
    source = diagram.to_digraph(a, "matrix").source
    reads = _cells(source, "read")
    assert len(reads) == t.connections == a.connections
    assert sorted(reads) == sorted((j, s) for j in range(1, t.layers + 1) for s in t.reads_of(j))
    assert [s for _, s in _cells(source, "emit")] == sorted(t.emits)
    assert len(_cells(source, "emit")) == len(t.emits)


def test_matrix_tells_the_three_families_apart():
    drawn = {f: frozenset(_cells(diagram.to_digraph(_analysis(r), "matrix").source, "read")) for f, r in RULES.items()}
    assert len(set(drawn.values())) == 3
    assert len(drawn["densenet"]) == 36 and len(drawn["hardnet"]) == 15


def test_matrix_numbers_each_cell_by_its_place_in_the_concatenation():
    source = diagram.to_digraph(_analysis(RULES["hardnet"]), "matrix").source
    row8 = re.findall(r'TOOLTIP="layer 8 reads x(\d+) \(\d+ ch\), (\d+)\w\w of its 4 inputs"', source)
    assert sorted(row8, key=lambda r: int(r[1])) == [("7", "1"), ("6", "2"), ("4", "3"), ("0", "4")]


def test_matrix_of_densenet201_block_3_stays_one_node_of_48_rows():
    a = densedsl.analyze(ROOT / "specs" / "densenet201.dense")
    source = diagram.to_digraph(a, "matrix", expand=3).source
    nodes, edges = parse_dot(source)
    assert list(nodes) == ["denseblock3"]
    assert len(_cells(source, "read")) == 48 * 49 // 2 == a.blocks[2].connections
    assert len(_cells(source, "emit")) == 49
    assert len(source) < 400_000  # one HTML table, not 1,176 edges


def test_render_matrix_from_the_cli_and_the_api(tmp_path, capsys):
    spec = tmp_path / "h.dense"
    spec.write_text(_spec_text(RULES["hardnet"]), "utf-8")
    out = tmp_path / "m.dot"
    assert main(["render", str(spec), "--detail", "matrix", "-o", str(out)]) == 0
    assert len(_cells(out.read_text("utf-8"), "read")) == 15
    assert densedsl.render(spec, "matrix").source == out.read_text("utf-8")
    with pytest.raises(ValueError, match="matrix"):
        densedsl.render(spec, "grid")


def _spec_text(rule: str) -> str:
    return ("network n {\n    input 3x16x16\n    stem {\n        conv 16 kernel=3 padding=1\n    }\n"
            f"    dense layers=8 growth=14 {rule}\n    head classes=10\n}}\n")


# --- the layers view ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", RULES)
def test_layers_view_draws_an_arc_only_for_a_real_read(family):
    a = _analysis(RULES[family])
    t = _table(a)
    nodes, edges = parse_dot(diagram.to_digraph(a, "layers").source)
    arcs = sorted((tail, head) for tail, head, kind in edges if kind == "dense")
    row = ["denseblock1.x0"] + [f"denseblock1.denselayer{j}" for j in range(1, 9)]
    assert arcs == sorted((row[s], row[j]) for j in range(1, 9) for s in t.reads_of(j))
    emitted = sorted(tail for tail, head, kind in edges if kind == "concat")
    assert emitted == sorted(row[s] for s in t.emits)


def test_layer_labels_list_their_reads_and_widths():
    a = _analysis(RULES["hardnet"])
    nodes, _ = parse_dot(diagram.to_digraph(a, "layers").source)
    label = _attr(nodes["denseblock1.denselayer8"], "label")
    assert "reads x7, x6, x4, x0" in label and "94 → 68 ch" in label
    title = _attr(nodes["denseblock1.title"], "label")
    assert "all earlier" not in title and "15 connections" in title and "x1, x3, x5, x7, x8" in title
    assert "widths 14, 24, 14, 40, 14, 24, 14, 68" in title
    assert "concatenate x1, x3, x5, x7, x8" in _attr(nodes["denseblock1.out"], "label")
    blocks, _ = parse_dot(diagram.to_digraph(a, "blocks").source)
    block = _attr(blocks["denseblock1"], "label")
    assert "15 connections" in block and "×8" not in block and "links=harmonic emit=odd" in block


def test_densenet_labels_keep_their_words():
    nodes, _ = parse_dot(diagram.to_digraph(_analysis(""), "layers").source)
    assert "all earlier layers: 8·9/2 = 36 connections" in _attr(nodes["denseblock1.title"], "label")
    assert "concatenate x0…x8" in _attr(nodes["denseblock1.out"], "label")
    assert "reads" not in _attr(nodes["denseblock1.denselayer8"], "label")


# --- explain -----------------------------------------------------------------------------------

def test_explain_lists_the_maps_a_layer_concatenates_in_order():
    a = _analysis(RULES["hardnet"])
    e = explain(a, 1, 8)
    (layer,) = e.layers
    assert [(i.map, i.channels) for i in layer.inputs] == [
        ("denseblock1.x7", 14), ("denseblock1.x6", 24), ("denseblock1.x4", 40), ("denseblock1.x0", 16)]
    assert layer.in_channels == 94
    text = e.text()
    assert "emits x1, x3, x5, x7, x8 = 124 channels" in text and "16 + 14·8" not in text
    assert e.as_json()["layers"][0]["inputs"][0]["map"] == "denseblock1.x7"


def test_explain_sparsenet_layer_reads_nearest_first():
    a = _analysis(RULES["sparsenet"])
    (layer,) = explain(a, 1, 8).layers
    assert [i.map.rsplit(".", 1)[1] for i in layer.inputs] == ["x7", "x6", "x4", "x0"]


# --- the heatmap -------------------------------------------------------------------------------

def test_heatmap_splits_each_first_conv_by_its_reads():
    torch = pytest.importorskip("torch")
    from densedsl.nn.build import build_model
    from densedsl.views.heatmap import connection_strength
    network = _spec(RULES["hardnet"]).network
    model = build_model(network)
    t = table(network.blocks[0])
    with torch.no_grad():
        for j in range(1, 9):
            w = dict(model.named_modules())[f"features.denseblock1.denselayer{j}.conv1"].weight
            start = 0
            for s in t.reads_of(j):  # each read's range holds 100·layer + s
                stop = start + t.channels_of(16, s)
                w[:, start:stop] = 100 * j + s
                start = stop
            assert start == w.shape[1]
        classifier = model.classifier.weight
        start = 0
        for s in t.emits:
            stop = start + t.channels_of(16, s)
            classifier[:, start:stop] = 1000 + s
            start = stop
    (matrix,) = connection_strength(model, network)
    for j in range(1, 9):
        for s in range(9):
            if s in t.reads_of(j):
                assert matrix[j - 1, s] == pytest.approx(100 * j + s)
            else:
                assert matrix[j - 1, s] != matrix[j - 1, s]  # NaN: no such connection
    for s in range(9):
        if s in t.emits:
            assert matrix[8, s] == pytest.approx(1000 + s)
        else:
            assert matrix[8, s] != matrix[8, s]


# --- CIO ---------------------------------------------------------------------------------------

def _tiny(rule: str) -> densedsl.Analysis:
    return densedsl.analyze(densedsl.parse(f"""network tiny {{
    input 3x8x8
    stem {{
        conv 4 kernel=3 padding=1
    }}
    dense layers=2 growth=2 {rule}
    head classes=10
}}
"""))


def test_cio_is_every_conv_s_input_plus_output_counted_by_hand():
    # stem conv 3x8x8 → 4x8x8; layer 1 4x8x8 → 2x8x8; layer 2 reads x1, x0 (6 ch) → 2x8x8
    assert _tiny("").cio == (3 + 4) * 64 + (4 + 2) * 64 + (6 + 2) * 64 == 1344
    # links=chain: layer 2 reads x1 alone (2 ch)
    assert _tiny("links=chain").cio == (3 + 4) * 64 + (4 + 2) * 64 + (2 + 2) * 64 == 1088


def test_cio_in_summary_text_and_json(capsys, tmp_path):
    a = _tiny("links=chain")
    s = summary(a)
    assert s.as_json()["totals"]["cio"] == 1088
    assert "CIO 1.09 K" in s.text() or "CIO 1,088" in s.text()
    spec = tmp_path / "t.dense"
    spec.write_text(_spec_text(RULES["hardnet"]), "utf-8")
    assert main(["summary", str(spec), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["totals"]["cio"]
    assert got == densedsl.analyze(spec).cio > 0


def test_densenet121_cio():
    a = densedsl.analyze(ROOT / "specs" / "densenet121.dense")
    convs = [attrs for _, attrs in a.arch.nodes(data=True) if attrs["kind"] == "conv"]
    assert len(convs) == 120  # 121 layers less the classifier
    assert a.cio == sum(_numel(c["in_shape"]) + _numel(c["out_shape"]) for c in convs)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
