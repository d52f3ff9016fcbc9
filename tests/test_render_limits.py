"""Diagrams too big for Graphviz to lay out are refused (E308) before `dot` runs; .dot output,
which needs no layout, is never limited (issue 24).

A fake `dot` on PATH records whether it was started, so these tests need no Graphviz and stay
fast whatever the machine.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from conftest import ROOT

from densedsl.analysis.figures import analyze
from densedsl.cli import main
from densedsl.core.diagnostics import SpecError
from densedsl.language.spec import load, parse
from densedsl.views import diagram


def _block(layers: int, extra: str = "") -> str:
    return (f"network big {{\n  input 3x8x8\n  dense layers={layers} growth=1 {extra}\n"
            "  head classes=2\n}\n")


@pytest.fixture
def fake_dot(tmp_path: Path, monkeypatch) -> Path:
    """A `dot` that notes it ran and draws a tiny SVG."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ran = tmp_path / "dot-ran"
    script = bin_dir / "dot"
    # shell builtins only: PATH holds nothing else
    script.write_text(f"#!/bin/sh\nwhile read -r _; do :; done\n: > '{ran}'\necho '<svg/>'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}")
    return ran


def _analysis(text: str):
    return analyze(parse(text).network)


def test_layer_view_over_the_edge_cap_is_e308_and_dot_never_runs(tmp_path, fake_dot, capsys):
    # 200 layers draw 20,512 edges: just over MAX_EDGES
    spec = tmp_path / "big.dense"
    spec.write_text(_block(200))
    out = tmp_path / "big.svg"
    code = main(["render", str(spec), "--detail", "layers", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "error[E308]" in err and "20,512 edges (at most 20,000)" in err
    assert "--expand N" in err and "--detail matrix" in err and ".dot" in err
    assert not fake_dot.exists() and not out.exists()


def test_the_same_block_as_dot_text_is_not_limited(tmp_path, fake_dot):
    spec = tmp_path / "big.dense"
    spec.write_text(_block(200))
    out = tmp_path / "big.dot"
    assert main(["render", str(spec), "--detail", "layers", "-o", str(out)]) == 0
    assert diagram.layout_size(out.read_text()).edges == 20_512


def test_blocks_view_of_the_same_block_is_drawn(tmp_path, fake_dot):
    spec = tmp_path / "big.dense"
    spec.write_text(_block(200))
    out = tmp_path / "big.svg"
    assert main(["render", str(spec), "--detail", "blocks", "-o", str(out)]) == 0
    assert fake_dot.exists() and out.read_text().strip() == "<svg/>"


def test_under_every_cap_dot_runs(tmp_path, fake_dot):
    # 190 layers: 18,530 edges, under the cap that 200 layers pass
    g = diagram.to_digraph(_analysis(_block(190)), "layers")
    assert diagram.layout_size(g.source).edges <= diagram.MAX_EDGES
    assert diagram.svg(_analysis(_block(190)), "layers") == "<svg/>\n"
    assert fake_dot.exists()


def test_matrix_over_the_cell_cap_is_e308_with_its_own_hint(fake_dot):
    a = _analysis(_block(230))   # (232 x 231) cells > MAX_CELLS
    with pytest.raises(SpecError) as e:
        diagram.svg(a, "matrix")
    text = str(e.value.diagnostics[0].message) + str(e.value.diagnostics[0].hint)
    assert e.value.diagnostics[0].code == "E308" and "matrix cells" in text
    assert "--expand N" in text and ".dot" in text
    assert not fake_dot.exists()


def test_many_clusters_are_refused(fake_dot):
    text = ("network many {\n  input 3x8x8\n  repeat 310 {\n    dense layers=1 growth=2\n"
            "    transition pool=none channels=4\n  }\n  dense layers=1 growth=2\n  head classes=2\n}\n")
    a = _analysis(text)
    with pytest.raises(SpecError) as e:
        diagram.svg(a, "layers")     # 621 boxes: each block and each transition
    assert e.value.diagnostics[0].code == "E308" and "boxes" in e.value.diagnostics[0].message
    assert diagram.svg(a, "overview") == "<svg/>\n"   # no boxes, 622 nodes: drawn
    assert fake_dot.exists()


def test_layout_size_counts_statements_not_text_inside_labels():
    g = diagram.to_digraph(_analysis(_block(4)), "layers")
    before = diagram.layout_size(g.source)
    g.node("odd", '<<B>a -&gt; b "x" -> y [z]</B>>', tooltip="p -> q")   # arrows in a label: no edge
    g.edge("odd", "denseblock1.x0", label="u -> v")
    after = diagram.layout_size(g.source)
    assert (after.nodes, after.edges, after.clusters) == (before.nodes + 1, before.edges + 1, before.clusters)
    # 10 dense arcs, 5 maps into the output, 5 title layout edges, input -> x0, 6 through the
    # head, 3 aligning the stages; the block's box and the head's row are the two clusters
    assert (before.edges, before.clusters) == (10 + 5 + 5 + 1 + 6 + 3, 2)


def test_the_specs_shipped_all_draw_at_every_detail():
    """The caps leave every real network drawable: the largest spec's layers view included."""
    for path in sorted((ROOT / "specs").glob("*.dense")):
        try:
            a = analyze(load(path).network)
        except SpecError:
            continue   # a file of several networks, or one that needs --network
        for detail in diagram.VIEWS:
            size = diagram.layout_size(diagram.to_digraph(a, detail).source)
            assert size.edges <= diagram.MAX_EDGES and size.nodes <= diagram.MAX_NODES, (path, detail)
            assert size.clusters <= diagram.MAX_CLUSTERS and size.cells <= diagram.MAX_CELLS, (path, detail)
