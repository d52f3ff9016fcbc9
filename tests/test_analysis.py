"""Figures and checks of `analyze`, against the paper, torchvision and the seeds (docs/analysis.md)."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from fractions import Fraction

import networks as N
import pytest
from conftest import ROOT
from measure import saved_bytes_of

import densedsl
from densedsl.analysis.figures import MinInputSize, _check_invariants, analyze
from densedsl.core.diagnostics import SpecError
from densedsl.ir import lowering
from densedsl.language.network import Conv, DenseBlock, Expectation, Network, Stem, Transition


def load(name: str, **params) -> "densedsl.Spec":
    return densedsl.load(f"specs/{name}.dense", **params)


def codes(exc: pytest.ExceptionInfo) -> list[str]:
    return [x.code.code for x in exc.value.diagnostics]


@pytest.fixture(scope="module")
def a121():
    return analyze(load("densenet121").network)


def test_densenet121_golden_figures(a121):
    assert a121.params == 7_978_856
    assert a121.macs == 2_834_161_664
    assert a121.flops == 5_668_323_328
    assert a121.depth == 121
    assert a121.connections == 535
    assert a121.channels == 1024
    assert a121.min_input_size == MinInputSize(eval=29, train=61)
    assert a121.input_shape == (3, 224, 224) and a121.output_shape == (1000,)
    assert a121.state_dict_entries == 727
    assert a121.receptive_field == 2071
    assert a121.diagnostics == ()


def test_check_line(a121):
    assert a121.check_line() == ("densenet121: 7,978,856 params · 5.67 GFLOPs · depth 121 · "
                                 "535 connections · 3x224x224 → 1000")


def test_zoo_file_is_the_paper_network():
    assert dataclasses.replace(load("densenet121").network, expectations=()) == N.torchvision(121)
    assert load("d2l_fashion_mnist").network.stages == N.d2l_fashion_mnist().stages


@pytest.mark.parametrize("depth, params, depth_figure", [
    (121, 7_978_856, 121), (169, 14_149_480, 169), (201, 20_013_928, 201),
    (161, 28_681_000, 161), (264, 33_337_704, 265),  # 6+12+64+48 layers give 265: the name's quirk
])
def test_torchvision_params(depth, params, depth_figure):
    a = analyze(load(f"densenet{depth}").network)
    assert (a.params, a.depth) == (params, depth_figure)


@pytest.mark.parametrize("file, depth, growth, c10, c100", [
    ("densenet_cifar", 40, 12, 1_019_722, 1_060_132),
    ("densenet_cifar", 100, 12, 6_979_642, 7_084_852),
    ("densenet_cifar", 100, 24, 27_249_082, 27_457_972),
    ("densenet_bc_cifar", 100, 12, 769_162, 800_032),
    ("densenet_bc_cifar", 250, 24, 15_324_406, 15_480_556),
    ("densenet_bc_cifar", 190, 40, 25_624_430, 25_821_620),
])
def test_cifar_table(file, depth, growth, c10, c100):
    for classes, params in ((10, c10), (100, c100)):
        a = analyze(load(file, depth=depth, growth=growth, classes=classes).network)
        assert a.params == params
        assert a.depth == depth


def test_seed_models():
    assert analyze(load("d2l_fashion_mnist").network).params == 758_226
    flux = analyze(load("d2l_flux").network)
    assert (flux.params, flux.buffers, flux.channels) == (754_082, 2_464, 248)
    assert flux.graph.nodes["transition1.pool"]["out_shape"][1:] == (13, 13)  # padding 1: 24 → 13


def test_every_zoo_file_analyses_cleanly():
    """analyze raises on any error, E205 among them, so an E205 can never reach a.diagnostics:
    run the invariant checker itself on each analysed graph, where its findings are visible."""
    from conftest import ZOO
    assert ZOO
    for path in ZOO:
        for spec in densedsl.language.spec.load_all(path):
            a = analyze(spec.network)
            assert _check_invariants(spec.network, a.graph, a.stages) == [], path.name


def _drop_dense_edge(g, block: str = "denseblock1") -> None:
    """On a networkx DiGraph or the analysis' own ArchGraph (which has no remove_edge)."""
    u, v = f"{block}.x0", f"{block}.denselayer2.concat"
    del g._succ[u][v], g._pred[v][u]


@pytest.mark.parametrize("damage", ["drop a dense edge", "add a skip edge", "widen a concat"])
def test_invariant_checker_finds_a_broken_graph(a121, damage):
    """The checker the zoo test relies on is not vacuous: each kind of damage is an E205."""
    g = a121.graph.copy()
    if damage == "drop a dense edge":
        _drop_dense_edge(g)
    elif damage == "add a skip edge":
        g.add_edge("stem.conv0", "denseblock2.denselayer3.concat", kind="dense", shape=(64, 56, 56))
    else:
        concat = g.nodes["denseblock3.denselayer5.concat"]
        concat["out_shape"] = (concat["out_shape"][0] + 1, *concat["out_shape"][1:])
    problems = _check_invariants(a121.network, g, a121.stages)
    assert problems and {x.code.code for x in problems} == {"E205"}


def test_the_cycle_check_is_exact_whatever_the_node_order(a121):
    """Edges that all run forward in node order prove the graph acyclic (the fast path); a
    backward edge falls back to a real test, which must not call an acyclic graph a cycle."""
    g = a121.graph.copy()
    g.add_edge("late", "input", kind="flow", shape=(3, 224, 224))  # backward in node order, no cycle
    assert _check_invariants(a121.network, g, a121.stages) == []
    g.add_edge("denseblock4.out", "stem.conv0", kind="flow", shape=(1024, 7, 7))
    problems = _check_invariants(a121.network, g, a121.stages)
    assert [x.message for x in problems] == ["the graph has a cycle"]


def test_each_closed_form_and_walk_is_made_once_per_analysis(monkeypatch, a121):
    """The parameter prediction `graph.check` makes is the one analysis' ceiling reads, and an
    efficient memory model finds the shared-buffer blocks once (both were made twice)."""
    import densedsl.analysis.memory as memory_

    calls = {"predict": 0, "shared": 0}
    efficient = a121.memory(mode="efficient")

    def counted(name, real):
        def call(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(lowering, "predict", counted("predict", lowering.predict))
    monkeypatch.setattr(memory_, "_shared_blocks", counted("shared", memory_._shared_blocks))
    a = analyze(a121.network)
    assert calls == {"predict": 1, "shared": 0}
    assert a.memory(mode="efficient") == efficient
    assert calls == {"predict": 1, "shared": 1}


def test_memory_models_are_made_on_first_use_and_kept(a121):
    a = analyze(load("densenet121").network)
    assert set(a._memory) == {"standard"}  # the resource check needs it; the others wait
    efficient = a.memory(mode="efficient")
    assert set(a._memory) == {"standard", "efficient"}
    assert a.memory(mode="efficient") == efficient
    with pytest.raises(ValueError, match="unknown memory mode"):
        a.memory(mode="tiny")


def test_the_cycle_check_is_exact_on_the_analysis_own_graph(a121):
    """The same fallback on the `ArchGraph` the analysis builds (networkx is imported only then)."""
    g = densedsl.analysis.graph.lower_arch(a121.network)

    def add_edge(u, v):
        g._succ.setdefault(u, {}), g._pred.setdefault(u, {}), g._node.setdefault(u, {})
        g._succ[u][v] = g._pred[v][u] = {"kind": "flow", "shape": (1,)}

    add_edge("late", "input")  # backward in node order, no cycle
    assert _check_invariants(a121.network, g, a121.stages) == []
    add_edge("denseblock4.out", "stem.conv0")
    assert [x.message for x in _check_invariants(a121.network, g, a121.stages)] == ["the graph has a cycle"]


def test_a_broken_lowering_raises_e205(monkeypatch, a121):
    lower = densedsl.analysis.figures.graph_.lower_arch

    def broken(*args, **kwargs):
        g = lower(*args, **kwargs)
        _drop_dense_edge(g, "denseblock2")
        return g

    monkeypatch.setattr(densedsl.analysis.figures.graph_, "lower_arch", broken)
    with pytest.raises(SpecError) as e:
        analyze(a121.network)
    assert "E205" in codes(e)


def test_stages_add_up(a121):
    assert [s.name for s in a121.stages] == ["stem", "denseblock1", "transition1", "denseblock2",
                                             "transition2", "denseblock3", "transition3",
                                             "denseblock4", "head"]
    assert sum(s.params for s in a121.stages) == a121.params
    assert sum(s.macs for s in a121.stages) == a121.macs
    assert sum(s.depth for s in a121.stages) == 121
    b3 = a121.stage("denseblock3")
    assert (b3.layers, b3.growth, b3.in_channels, b3.out_channels, b3.connections) == (24, 32, 256, 1024, 300)
    assert b3.in_shape == (256, 14, 14) and b3.out_shape == (1024, 14, 14)
    assert b3.span is not None and b3.span.line == 19


def test_feature_info(a121):
    assert [(f.name, f.module, f.channels, f.reduction) for f in a121.feature_info] == [
        ("stem", "features.relu0", 64, 2),  # timm's first entry: the stem before its max pool
        ("denseblock1", "features.denseblock1", 256, 4), ("denseblock2", "features.denseblock2", 512, 8),
        ("denseblock3", "features.denseblock3", 1024, 16), ("denseblock4", "features.denseblock4", 1024, 32)]



def _stem_tap(text_stem: str, input_: str = "3x32x32") -> list[tuple]:
    stem = "\n".join(text_stem.split(", "))
    spec = densedsl.parse(f"network t {{\n input {input_}\n stem {{\n{stem}\n}}\n"
                          " dense layers=1 growth=2\n}\n")
    return [(f.name, f.module, f.channels, f.reduction, f.shape)
            for f in analyze(spec.network).feature_info if f.name == "stem"]


@pytest.mark.parametrize("stem, input_, expected", [
    # no pool: the stem's output, at its own stride
    ("conv 8 kernel=3 padding=1", "3x32x32", [("stem", "features.conv0", 8, 1, (8, 32, 32))]),
    ("conv 8 kernel=3 stride=2 padding=1, norm, relu", "3x32x32",
     [("stem", "features.relu0", 8, 2, (8, 16, 16))]),
    # two trailing pools: tapped before both
    ("conv 8 kernel=3 padding=1, relu, maxpool kernel=2 stride=2, avgpool kernel=2 stride=2", "3x32x32",
     [("stem", "features.relu0", 8, 1, (8, 32, 32))]),
    # a pool inside the stem counts towards the tap's reduction
    ("conv 8 kernel=3 padding=1, maxpool kernel=2 stride=2, conv 8 kernel=3 padding=1, maxpool kernel=2 stride=2",
     "3x32x32", [("stem", "features.conv1", 8, 2, (8, 16, 16))]),
    # ranks 1 and 3
    ("conv 8 kernel=7 stride=2 padding=3, norm, relu, maxpool kernel=3 stride=2 padding=1", "3x64",
     [("stem", "features.relu0", 8, 2, (8, 32))]),
    ("conv 8 kernel=7 stride=2 padding=3, norm, relu, maxpool kernel=3 stride=2 padding=1", "1x16x16x16",
     [("stem", "features.relu0", 8, 2, (8, 8, 8, 8))]),
    # a stem of pools only computes nothing of its own: no tap
    ("maxpool kernel=2 stride=2", "3x32x32", []),
])
def test_feature_info_stem_tap(stem, input_, expected):
    assert _stem_tap(stem, input_) == expected


def test_feature_info_without_a_stem_starts_at_the_first_block():
    a = analyze(load("seed_example").network)
    assert [f.name for f in a.feature_info] == ["denseblock1"]


# --- memory ------------------------------------------------------------------------------------

def test_memory_by_hand():
    """1x4x4 input, one plain layer of growth 1, no head: the concat (16 elements) and the
    in-place BN-ReLU output (16) are kept, plus BN's mean and inverse std (2 floats)."""
    net = Network(name="m", input=(1, 4, 4), stages=(DenseBlock(index=1, layers=1, growth=1),))
    a = analyze(net)
    assert a.memory() == 32 * 4 + 2 * 4
    assert a.memory(batch=3) == 3 * 32 * 4 + 2 * 4
    assert a.memory(dtype="float16") == 32 * 2 + 2 * 4


def test_memory_modes(a121):
    std, eff, inf = (a121.memory(32, mode=m) for m in ("standard", "efficient", "inference"))
    assert inf < eff < std
    assert a121.memory(64) - a121.memory(32) == a121.memory(33) - a121.memory(1)  # linear in batch
    assert a121.memory(1, weights=True) == a121.memory(1) + (2 * a121.params + a121.buffers) * 4
    with pytest.raises(ValueError):
        a121.memory(mode="fast")


def test_standard_memory_is_quadratic_and_efficient_linear_in_depth():
    def mem(layers, mode):
        net = Network(name="q", input=(3, 16, 16), stem=Stem(ops=(Conv(out_channels=16),)),
                      stages=(DenseBlock(index=1, layers=layers, growth=12, bottleneck=4),))
        return analyze(net).memory(mode=mode)
    std = [mem(n, "standard") for n in (20, 40, 80)]
    eff = [mem(n, "efficient") for n in (20, 40, 80)]
    assert std[2] / std[1] > 3.3 and std[1] / std[0] > 3      # ~4x per doubling
    assert eff[2] / eff[1] < 2.3 and eff[1] / eff[0] < 2.3    # ~2x per doubling


@pytest.mark.slow
def test_standard_memory_matches_what_autograd_saves():
    """Counted with saved_tensors_hooks on the compiled model: distinct storages, weights excluded."""
    pytest.importorskip("torch")
    for net in (N.cifar(40, 12), N.torchvision(121, input_size=64)):
        measured = saved_bytes_of(net)
        assert abs(analyze(net).memory(2) - measured) / measured < 0.05


# --- checks ------------------------------------------------------------------------------------

def test_e201_transition_without_channels():
    net = dataclasses.replace(N.tiny(), stages=(DenseBlock(index=1, layers=4, growth=12),
                                                Transition(index=1, compression=Fraction(1, 100))))
    with pytest.raises(SpecError) as e:
        analyze(net)
    assert codes(e) == ["E201"]
    assert "denseblock1 emits 16 + 12·4 = 64 channels" in e.value.diagnostics[0].message
    assert "⌊0.01·64⌋ = 0" in e.value.diagnostics[0].message


def test_e202_map_shrinks_below_1x1_with_the_size_chain():
    with pytest.raises(SpecError) as e:
        analyze(N.tiny(input_size=8, transitions=4))
    (diag,) = e.value.diagnostics
    assert diag.code.code == "E202"
    assert diag.message.startswith("transition4.pool")
    assert "8x8 → 4x4 (transition1.pool) → 2x2 (transition2.pool) → 1x1 (transition3.pool)" in diag.message
    assert "16x16" in diag.hint


def test_e203_kernel_larger_than_input():
    net = dataclasses.replace(N.tiny(), input=(3, 5, 5),
                              stem=Stem(ops=(Conv(out_channels=16, kernel=7, padding=0),)))
    with pytest.raises(SpecError) as e:
        analyze(net)
    assert codes(e) == ["E203"]
    assert "7x7 kernel, larger than its 5x5 input" in e.value.diagnostics[0].message


def test_w204_dropped_rows_and_w206_batch_of_one():
    a = analyze(N.torchvision(121, input_size=225))
    assert [x.code.code for x in a.diagnostics] == ["W204"]
    assert "57x57" in a.diagnostics[0].message
    small = analyze(N.torchvision(121, input_size=32))
    (w,) = small.diagnostics
    assert w.code.code == "W206" and "61x61" in w.hint
    assert not analyze(N.torchvision(121, input_size=61)).diagnostics


def test_e301_e302_guards_and_their_overrides(a121):
    net = N.torchvision(121)
    with pytest.raises(SpecError) as e:
        analyze(net, max_params=1_000_000)
    assert codes(e) == ["E301"] and "7,978,856" in e.value.diagnostics[0].message
    with pytest.raises(SpecError) as e:
        analyze(net, max_memory=2**20)
    assert codes(e) == ["E302"]
    assert analyze(net, max_params=math.inf, max_memory=math.inf).params == 7_978_856


def test_e303_expectations():
    exp = (Expectation(key="params", value=Fraction(8_000_000), tolerance=Fraction(5000), text="8.000M"),
           Expectation(key="connections", value=Fraction(535), tolerance=Fraction(0), text="535"),
           Expectation(key="channels", value=Fraction(1000), tolerance=Fraction(0), text="1000"))
    with pytest.raises(SpecError) as e:
        analyze(dataclasses.replace(N.torchvision(121), expectations=exp))
    assert codes(e) == ["E303", "E303"]
    messages = " ".join(x.message for x in e.value.diagnostics)
    assert "7,995,000 to 8,005,000" in messages and "7,978,856" in messages and "1,024" in messages


@pytest.mark.parametrize("stages", [
    (DenseBlock(index=1, layers=10**6, growth=12),),
    (DenseBlock(index=1, layers=100, growth=10**6, bottleneck=4),),
    tuple(DenseBlock(index=i, layers=40, growth=12) for i in range(1, 2000)),
])
def test_e304_refused_without_a_graph(stages, monkeypatch):
    """Refused from the closed form, before any graph is built (how long that takes is measured
    by bench/bench_analysis.py, not asserted here)."""
    def no_graph(*args, **kwargs):
        raise AssertionError("a graph was built for a network refused from its size")

    monkeypatch.setattr(densedsl.analysis.figures.graph_, "lower", no_graph)
    net = dataclasses.replace(N.tiny(), stages=stages)
    with pytest.raises(SpecError) as e:
        analyze(net)
    assert codes(e) == ["E304"]


def test_hard_params_ceiling_ignores_max_params(monkeypatch):
    net = dataclasses.replace(N.tiny(), stages=(DenseBlock(index=1, layers=200, growth=10**5, bottleneck=4),))
    with pytest.raises(SpecError) as e:
        analyze(net, max_params=math.inf)
    assert codes(e) == ["E304"]
    message = e.value.diagnostics[0].message
    assert f"{lowering.predict(net).params:,} parameters" in message and "(1 T)" in message
    # The ceiling is HARD_MAX_PARAMS, inclusive, whatever max_params says: moved to a small
    # network's exact count, it refuses that network, and one parameter higher it lets it pass.
    tiny = N.tiny()
    count = lowering.predict(tiny).params
    monkeypatch.setattr(densedsl.analysis.figures, "HARD_MAX_PARAMS", count)
    with pytest.raises(SpecError) as e:
        analyze(tiny, max_params=math.inf)
    assert codes(e) == ["E304"]
    monkeypatch.setattr(densedsl.analysis.figures, "HARD_MAX_PARAMS", count + 1)
    assert analyze(tiny, max_params=math.inf).params == count


def test_importing_analysis_does_not_import_torch():
    code = ("import sys, densedsl, densedsl.cli, densedsl.analysis.figures, densedsl.views.report, densedsl.analysis.graph; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_failed_expectations_show_expected_got_and_the_derivation():
    import densedsl
    text = (ROOT / "specs" / "densenet121.dense").read_text().replace(
        "connections=535 channels=1024", "connections=536 channels=1000")
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.analyze(densedsl.parse(text, source="dn.dense"))
    messages = {d.message.split()[1]: d.message for d in e.value.diagnostics}
    assert messages["connections"] == (
        "expected connections 536 (exactly 536), the analysis gives 535 = 21 (denseblock1) + "
        "78 (denseblock2) + 300 (denseblock3) + 136 (denseblock4)")
    assert messages["channels"].endswith(
        "gives 1,024 = 512 + 16·32 (denseblock4: 512 in, 16 layers of growth 32)")
    assert all(d.code == "E303" and d.line == 24 for d in e.value.diagnostics)


def test_inference_memory_counts_a_batch_norm_after_a_conv_as_folded_into_it():
    """The inference engine folds a BN that follows a conv into the conv (one tensor, not two);
    the inference prediction does too (3-D DenseNet-121 at 2x1x96^3: the stem's conv and BN
    output were 108 MiB of a predicted peak the engine never reaches, bench_monai measured 81)."""
    def text(stem: str) -> str:
        return f"network n {{\n input 1x32x32x32\n stem {{\n {stem}\n }}\n dense layers=1 growth=4\n}}\n"

    def inference(stem: str) -> int:
        return densedsl.analyze(text(stem)).memory(2, mode="inference")

    folded = inference("conv 16 kernel=3 stride=1 padding=1\n norm\n relu\n maxpool kernel=2 stride=2")
    bare = inference("conv 16 kernel=3 stride=1 padding=1\n relu\n maxpool kernel=2 stride=2")
    assert folded == bare
    # training keeps both (autograd saves the conv output for BN's backward)
    std = densedsl.analyze(text("conv 16 kernel=3 stride=1 padding=1\n norm\n relu\n maxpool kernel=2 stride=2"))
    assert std.memory(2, mode="standard") > densedsl.analyze(
        text("conv 16 kernel=3 stride=1 padding=1\n relu\n maxpool kernel=2 stride=2")).memory(2, mode="standard")
