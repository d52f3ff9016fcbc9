"""Diagrams (densedsl.views.diagram): what is drawn must be the analysis graph, read off the DOT text.

Every test here reads `Digraph.source` and needs no Graphviz binary, except the ones marked
`needs_dot`, which skip cleanly where `dot` is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import graphviz
import pytest
from conftest import ROOT, ZOO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import densedsl
from densedsl.analysis.figures import Analysis, analyze
from densedsl.cli import main
from densedsl.core.diagnostics import SpecError
from densedsl.testing.strategies import networks
from densedsl.views import diagram

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")

_ID = r'"(?:[^"\\]|\\.)*"|[A-Za-z_][A-Za-z_0-9]*'
_EDGE = re.compile(rf"^\s*({_ID}) -> ({_ID})(?: \[(.*)\])?$")
_NODE = re.compile(rf"^\s*({_ID}) \[(.*)\]$")
_KEYWORDS = {"graph", "node", "edge"}


def _unquote(name: str) -> str:
    return name[1:-1].replace('\\"', '"') if name.startswith('"') else name


def _attr(attrs: str, key: str) -> str | None:
    m = re.search(rf'(?:^| ){key}=(<|"(?:[^"\\]|\\.)*"|[^ \]]+)', attrs)
    if not m:
        return None
    if m.group(1) != "<":
        return _unquote(m.group(1))
    depth, start = 0, m.start(1)  # an HTML-like label: up to the matching '>'
    for i in range(start, len(attrs)):
        depth += {"<": 1, ">": -1}.get(attrs[i], 0)
        if depth == 0:
            return attrs[start:i + 1]
    raise AssertionError(f"unbalanced HTML label in {attrs!r}")


def parse_dot(source: str) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Nodes (name → attribute text) and drawn edges (tail, head, class) of our DOT output, with
    `dir=back` edges turned back to the direction of the data; layout edges left out."""
    nodes: dict[str, str] = {}
    edges: list[tuple[str, str, str]] = []
    for line in source.splitlines():
        if m := _EDGE.match(line):
            tail, head, attrs = _unquote(m.group(1)), _unquote(m.group(2)), m.group(3) or ""
            cls = _attr(attrs, "class")
            if cls == "layout":
                continue
            if _attr(attrs, "dir") == "back":
                tail, head = head, tail
            edges.append((tail, head, cls))
        elif (m := _NODE.match(line)) and m.group(1) not in _KEYWORDS:
            nodes[_unquote(m.group(1))] = m.group(2)
    return nodes, edges


def _owner(n: str, drawn: set[str]) -> str:
    """The DOT node standing for analysis node `n`: itself or a drawn prefix; a drawn dense
    layer also stands for its output map x_ℓ."""
    if m := re.fullmatch(r"(denseblock\d+)\.x([1-9]\d*)", n):
        layer = f"{m.group(1)}.denselayer{m.group(2)}"
        if layer in drawn:
            return layer
    candidates = [d for d in drawn if n == d or n.startswith(d + ".")]
    assert len(candidates) == 1, (n, candidates)
    return candidates[0]


def assert_corresponds(a: Analysis, g: graphviz.Digraph, expanded: set[int]) -> None:
    """The diagram is the analysis graph, grouped: nodes partition the analysis nodes, and drawn
    edges are exactly the analysis edges between different groups, one each, same kind."""
    nodes, edges = parse_dot(g.source)
    drawn = {n for n, attrs in nodes.items() if _attr(attrs, "class") != "note"}
    owner = {n: _owner(n, drawn) for n in a.graph.nodes}
    assert set(owner.values()) == drawn, drawn - set(owner.values())
    expected = sorted((owner[u], owner[v], k) for u, v, k in a.graph.edges(data="kind")
                      if owner[u] != owner[v])
    assert sorted(edges) == expected
    for b in a.blocks:
        dense = [e for e in edges if e[2] == "dense" and e[1].startswith(f"{b.name}.")]
        # the block's connectivity table (DenseNet's: L(L+1)/2 reads, cin = k0 + k·(ℓ−1))
        table = next(x.table for x in a.lowered if getattr(x, "name", "") == b.name)
        if b.index in expanded:
            assert len(dense) == table.connections == b.connections
            if table.dense:
                assert len(dense) == b.layers * (b.layers + 1) // 2
            assert f"{b.name}.x0" in drawn and f"{b.name}.out" in drawn
            for layer in range(1, b.layers + 1):
                label = _attr(nodes[f"{b.name}.denselayer{layer}"], "label")
                cin, width = table.in_channels(b.in_channels, layer), table.widths[layer - 1]
                unit = "ch" if len(b.in_shape) > 1 else "features"
                assert (f"{cin} → {width} {unit}" in label or f">{cin}<" in label), label
            # a map's size reads 64x8x8; a feature vector's (an MLP's) is its width alone
            shown = f"{b.out_shape[0]}x" if len(b.out_shape) > 1 else f">{b.out_shape[0]}<"
            assert shown in _attr(nodes[f"{b.name}.out"], "label")
        else:
            assert dense == []
            unit = "ch" if len(b.in_shape) > 1 else "features"
            assert f"{b.in_channels} → {b.out_channels} {unit}" in _attr(nodes[b.name], "label")


@pytest.fixture(scope="module")
def dn121() -> Analysis:
    return densedsl.analyze(str(Path(__file__).parent.parent / "specs" / "densenet121.dense"))


@pytest.fixture(scope="module")
def seed() -> Analysis:
    return densedsl.analyze(str(Path(__file__).parent.parent / "specs" / "seed_example.dense"))


# --- the zoo -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.stem)
def test_zoo_every_detail_is_the_analysis_graph(path: Path) -> None:
    a = densedsl.analyze(str(path))
    all_blocks = {b.index for b in a.blocks}
    for detail, expanded in (("overview", set()), ("blocks", set()), ("layers", all_blocks)):
        assert_corresponds(a, diagram.to_digraph(a, detail), expanded)
    for b in a.blocks:
        assert_corresponds(a, diagram.to_digraph(a, "blocks", expand=b.index), {b.index})


@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.stem)
def test_zoo_overview_is_one_node_per_stage(path: Path) -> None:
    a = densedsl.analyze(str(path))
    nodes, edges = parse_dot(diagram.to_digraph(a).source)
    names = ["input", *(s.name for s in a.stages), "output"]
    assert [n for n in nodes if _attr(nodes[n], "class") != "note"] == names
    assert edges == [(u, v, "flow") for u, v in zip(names, names[1:])]
    for s in a.stages:
        label = _attr(nodes[s.name], "label")
        unit = "ch" if len(s.in_shape) > 1 else "features"  # an MLP's widths count features
        assert f"{s.in_shape[0]} → {s.out_shape[0]} {unit}" in label or s.kind == "head", label
    caption = re.search(r"^\tlabel=(.*)$", diagram.to_digraph(a).source, re.M).group(1)
    assert f"{a.params:,} params" in caption and f"{a.connections:,} dense connections" in caption


def test_overview_labels_say_what_matters(dn121: Analysis) -> None:
    nodes, edges = parse_dot(diagram.to_digraph(dn121).source)
    block3 = _attr(nodes["denseblock3"], "label")
    for text in ("dense block 3", "24 layers", "k=32", "bottleneck 4k", "256 → 1024 ch", "14x14",
                 "300 connections"):
        assert text in block3, text
    t3 = _attr(nodes["transition3"], "label")
    for text in ("θ=0.5", "1024 → 512 ch", "14x14 → 7x7"):
        assert text in t3, text
    shapes = {(m.group(1), m.group(2)): _attr(m.group(3), "label")
              for line in diagram.to_digraph(dn121).source.splitlines() if (m := _EDGE.match(line))}
    assert shapes[("denseblock2", "transition2")].strip() == "512x28x28"
    assert shapes[("input", "stem")].strip() == "3x224x224"
    assert shapes[("head", "output")].strip() == "1000"


def test_blocks_detail_states_the_layer_recipe(dn121: Analysis) -> None:
    nodes, _ = parse_dot(diagram.to_digraph(dn121, "blocks").source)
    assert "BN-ReLU-Conv1x1(128)-BN-ReLU-Conv3x3(32) ×6" in _attr(nodes["denseblock1"], "label")
    assert {"stem.conv0", "stem.pool0", "head.linear", "transition1.conv"} <= set(nodes)


def test_expand_draws_only_that_block(dn121: Analysis) -> None:
    g = diagram.to_digraph(dn121, "layers", expand=2)
    assert_corresponds(dn121, g, {2})
    _, edges = parse_dot(g.source)
    assert sum(1 for e in edges if e[2] == "dense") == 78
    assert g.source.count("class=dense") == 78
    several = diagram.to_digraph(dn121, "overview", expand=[1, 4])
    assert_corresponds(dn121, several, {1, 4})
    assert several.source.count("class=dense") == 21 + 136


def test_left_to_right_draws_the_same_graph(dn121: Analysis, seed: Analysis) -> None:
    for a in (dn121, seed):
        g = diagram.to_digraph(a, "layers", rankdir="LR")
        assert "rankdir=LR" in g.source
        assert_corresponds(a, g, {b.index for b in a.blocks})
    assert "rankdir=LR" in diagram.to_digraph(seed, rankdir="lr").source


def test_dense_arcs_fade_with_distance(seed: Analysis, dn121: Analysis) -> None:
    source = diagram.to_digraph(dn121, "layers", expand=2).source
    widths = {}
    for line in source.splitlines():
        m = _EDGE.match(line)
        if m and "class=dense" in line:
            tail, head = _unquote(m.group(1)), _unquote(m.group(2))
            src = 0 if tail.endswith(".x0") else int(tail.rsplit("denselayer", 1)[1])
            distance = int(head.rsplit("denselayer", 1)[1]) - src
            widths.setdefault(distance, set()).add(float(_attr(m.group(3), "penwidth")))
    assert all(len(w) == 1 for w in widths.values())
    ordered = [widths[d].pop() for d in sorted(widths)]
    assert ordered == sorted(ordered, reverse=True) and ordered[0] > ordered[-1]


def test_legend_lists_the_stage_kinds_drawn(dn121: Analysis, seed: Analysis) -> None:
    full = diagram.to_digraph(dn121).source
    for word in ("stem", "dense block", "transition", "head", "input / output"):
        assert f">{word}</FONT>" in full
    small = diagram.to_digraph(seed).source
    assert ">stem</FONT>" not in small and ">head</FONT>" not in small


# --- generated networks ------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(network=networks(max_blocks=3, max_layers=6),
       detail=st.sampled_from(diagram.DETAILS), rankdir=st.sampled_from(diagram.RANKDIRS))
def test_generated_networks_draw_their_graph(network, detail, rankdir) -> None:
    a = analyze(network)
    g = diagram.to_digraph(a, detail, rankdir=rankdir)
    expanded = {b.index for b in a.blocks} if detail == "layers" else set()
    assert_corresponds(a, g, expanded)
    assert g.source == diagram.to_digraph(a, detail, rankdir=rankdir).source


@settings(max_examples=20, deadline=None)
@given(network=networks(max_blocks=3, max_layers=8), data=st.data())
def test_generated_networks_expand_one_block(network, data) -> None:
    a = analyze(network)
    n = data.draw(st.sampled_from([b.index for b in a.blocks]))
    assert_corresponds(a, diagram.to_digraph(a, "overview", expand=n), {n})


# --- determinism -------------------------------------------------------------------------------

def test_dot_is_byte_stable_across_processes(tmp_path: Path, root: Path) -> None:
    outputs = []
    for seed_value in ("0", "1", "12345"):
        out = tmp_path / f"d{seed_value}.dot"
        env = {**os.environ, "PYTHONHASHSEED": seed_value}
        subprocess.run([sys.executable, "-m", "densedsl", "render", str(root / "specs" / "densenet121.dense"),
                        "--detail", "layers", "--expand", "2", "-o", str(out)],
                       check=True, env=env, cwd=root, capture_output=True)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    assert b"class=dense" in outputs[0]


def test_diagram_does_not_import_torch(root: Path) -> None:
    code = "import sys, densedsl.views.diagram, densedsl.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# --- errors and writing ------------------------------------------------------------------------

def test_bad_arguments_are_value_errors(seed: Analysis) -> None:
    with pytest.raises(ValueError, match="unknown detail"):
        diagram.to_digraph(seed, "everything")
    with pytest.raises(ValueError, match="rankdir"):
        diagram.to_digraph(seed, rankdir="BT")
    with pytest.raises(ValueError, match="no dense block 2"):
        diagram.to_digraph(seed, expand=2)


def test_dot_output_needs_no_graphviz(seed: Analysis, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` anywhere
    out = tmp_path / "seed.dot"
    diagram.write(diagram.to_digraph(seed, "layers"), out)
    assert out.read_text(encoding="utf-8") == diagram.to_digraph(seed, "layers").source


@pytest.mark.parametrize("ext", ["svg", "png", "pdf"])
def test_missing_dot_is_e906_and_writes_nothing(seed: Analysis, tmp_path: Path, monkeypatch, ext) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / f"seed.{ext}"
    with pytest.raises(SpecError) as e:
        diagram.write(diagram.to_digraph(seed), out)
    text = str(e.value)
    assert "E906" in text and "apt-get install graphviz" in text and "brew install graphviz" in text
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(seed: Analysis, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "seed.png"
    out.write_bytes(b"old picture")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SpecError):
        diagram.write(diagram.to_digraph(seed), out)
    assert out.read_bytes() == b"old picture"
    assert [p.name for p in tmp_path.iterdir()] == ["seed.png"]


def test_unknown_extension_is_e907(seed: Analysis, tmp_path: Path) -> None:
    for name in ("seed.jpg", "seed"):
        with pytest.raises(SpecError) as e:
            diagram.write(diagram.to_digraph(seed), tmp_path / name)
        assert "E907" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_missing_dot(root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    status = main(["render", str(root / "specs" / "seed_example.dense"), "-o", str(tmp_path / "x.svg")])
    assert status == 1
    assert "error[E906]" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_render(root: Path, tmp_path: Path, capsys) -> None:
    spec = str(root / "specs" / "densenet_bc_cifar.dense")
    out = tmp_path / "bc.dot"
    assert main(["render", spec, "-o", str(out), "--detail", "layers", "--expand", "1",
                 "--set", "depth=40", "--rankdir", "lr"]) == 0
    text = out.read_text(encoding="utf-8")
    assert "rankdir=LR" in text and text.count("class=dense") == 6 * 7 // 2
    assert main(["render", spec, "-o", str(tmp_path / "bc.gif")]) == 1
    assert "E907" in capsys.readouterr().err
    assert main(["render", spec, "-o", str(tmp_path / "bc.dot"), "--expand", "7"]) == 2
    assert "no dense block 7" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bc.dot"]


def _fake_dot(directory: Path, script: str) -> None:
    """A `dot` on PATH that runs `script` (sh) instead of drawing."""
    directory.mkdir()
    dot = directory / "dot"
    dot.write_text(f"#!/bin/sh\n{script}\n")
    dot.chmod(0o755)


@pytest.mark.parametrize("script, said", [
    # Exits before reading its input: densedsl's write into dot's stdin breaks the pipe.
    ('echo "Error: out of memory in the layout" >&2; exit 1', "Error: out of memory in the layout"),
    ("kill -9 $$", "killed by SIGKILL"),
    ("exit 0", "it wrote nothing"),
])
def test_any_dot_failure_is_e914_naming_dot(root: Path, tmp_path: Path, monkeypatch, capsys,
                                            script: str, said: str) -> None:
    _fake_dot(tmp_path / "bin", script)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    out = tmp_path / "out" / "dn121.svg"
    out.parent.mkdir()
    # Large enough (about 1 MB of DOT) that dot's early exit breaks densedsl's pipe into it.
    status = main(["render", str(root / "specs" / "densenet264.dense"), "--detail", "layers", "-o", str(out)])
    err = capsys.readouterr().err
    assert status == 1, err
    assert "error[E914]" in err and "`dot`" in err and said in err
    assert list(out.parent.iterdir()) == []


@needs_dot
def test_huge_network_name_still_renders(seed: Analysis, tmp_path: Path) -> None:
    """A 1,000,000-character name (dot's strings end at 16,384) is shown cut, not fatal."""
    import dataclasses
    huge = analyze(dataclasses.replace(seed.network, name="n" * 1_000_000))
    out = tmp_path / "huge.svg"
    diagram.write(diagram.to_digraph(huge), out)
    assert "999,800 more characters" in out.read_text(encoding="utf-8")


# --- with Graphviz -----------------------------------------------------------------------------

@needs_dot
@pytest.mark.parametrize("ext, magic", [("svg", b"<?xml"), ("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_renders_with_dot(seed: Analysis, tmp_path: Path, ext: str, magic: bytes) -> None:
    out = tmp_path / f"seed.{ext}"
    diagram.write(diagram.to_digraph(seed, "layers"), out)
    assert out.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


@needs_dot
def test_svg_keeps_the_edge_classes(dn121: Analysis) -> None:
    text = diagram.svg(dn121, "layers", expand=2)
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert text.count('class="edge dense"') == 78
    assert text.count('class="edge concat"') == 13


# --- heatmap (densedsl.views.heatmap, wired into `render`) --------------------------------------------

def test_cli_heatmap(root: Path, tmp_path: Path, capsys) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    from densedsl.nn.build import build_model
    spec = root / "specs" / "seed_example.dense"
    weights = tmp_path / "seed.pt"
    torch.save(build_model(densedsl.load(str(spec)).network).state_dict(), weights)
    out = tmp_path / "heat.png"
    assert main(["render", str(spec), "--heatmap", "--weights", str(weights), "-o", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    assert main(["render", str(spec), "--heatmap", "-o", str(tmp_path / "h.png")]) == 2
    assert main(["render", str(spec), "--heatmap", "--weights", str(weights), "-o", str(tmp_path / "h.dot")]) == 1
    assert "E907" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.png", "seed.pt"]


def test_jupyter_shows_specs_and_analyses_as_svg(monkeypatch):
    import shutil
    spec = densedsl.load(ROOT / "specs" / "seed_example.dense")
    if shutil.which("dot"):
        assert spec._repr_svg_().lstrip().startswith(("<?xml", "<svg"))
        assert "dense block 1" in densedsl.analyze(spec)._repr_svg_()
    monkeypatch.setenv("PATH", "/nonexistent")
    assert spec._repr_svg_() is None  # no picture, no exception, without Graphviz
