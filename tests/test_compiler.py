"""The compiled PyTorch model: layout, semantics, memory modes, entry points, weights.

Inputs are tiny (the CI machines have two cores); zoo-sized models are built on the meta device
when only shapes or FLOPs matter.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from measure import saved_bytes

torch = pytest.importorskip("torch")
from networks import d2l_fashion_mnist, torchvision  # noqa: E402
from torch import nn  # noqa: E402

import densedsl  # noqa: E402
from densedsl.language import network as n  # noqa: E402
from densedsl.nn.build import build_model  # noqa: E402
from densedsl.nn.engine import accelerate  # noqa: E402
from densedsl.nn.model import DenseBlock, DenseLayer, DenseNet, Transition  # noqa: E402
from densedsl.nn.weights import WeightsError, load_weights  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
ZOO = sorted((ROOT / "specs").glob("*.dense"))

SMALL = """
network small {
    input 3x16x16
    stem {
        conv 8 kernel=3 padding=1
        norm
        relu
    }
    dense layers=3 growth=4 bottleneck=2 dropout=0.1
    transition compression=0.5
    dense layers=2 growth=4 order=post bias=true
    transition channels=6 pool=max kernel=3 stride=2 padding=1
    dense layers=2 growth=3
    head classes=5
}
"""


def small() -> n.Network:
    return densedsl.parse(SMALL).network


def model_of(network: n.Network, **kw) -> DenseNet:
    """The model as `compile` builds it: with the inference engine (an opt-in pass)."""
    torch.manual_seed(0)
    return accelerate(DenseNet(network, **kw))


def randomise_norms(model: nn.Module) -> None:
    """Non-trivial BN statistics, so folding and eval paths are really exercised."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def reference_forward(model: DenseNet, x):
    """The plain torch.cat path: autograd on forces it."""
    with torch.enable_grad():
        return model(x.detach().requires_grad_()).detach()


def read_tsv(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            rows.append((key, shape))
    return rows


def layout(model: nn.Module) -> list[tuple[str, str]]:
    return [(k, "x".join(map(str, v.shape)) if v.dim() else "scalar") for k, v in model.state_dict().items()]


# --- layout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [121, 161, 169, 201])
def test_zoo_state_dict_equals_torchvision(depth):
    network = densedsl.load(ROOT / "specs" / f"densenet{depth}.dense").network
    model = DenseNet(network, device="meta")
    assert layout(model) == read_tsv(DATA / f"torchvision_densenet{depth}_state_dict.tsv")


@pytest.mark.parametrize("enabled", [True, False])
def test_build_model_leaves_the_garbage_collector_as_it_found_it(enabled):
    """build_model pauses Python's collector while it analyses and builds (a speed measure):
    afterwards, and after a refused network, the collector is on or off as the caller had it."""
    import gc
    (gc.enable if enabled else gc.disable)()
    try:
        assert isinstance(build_model(d2l_fashion_mnist(), engine=False), DenseNet)
        assert gc.isenabled() is enabled
        with pytest.raises(densedsl.SpecError):
            build_model(torchvision(121), memory_limit=1)  # E307: refused inside the pause
        assert gc.isenabled() is enabled
    finally:
        gc.enable()


def test_hand_built_densenet121_layout():
    model = DenseNet(torchvision(121), device="meta")
    rows = layout(model)
    assert len(rows) == 727
    assert rows == read_tsv(DATA / "torchvision_densenet121_state_dict.tsv")
    assert sum(p.numel() for p in model.parameters()) == 7_978_856


def test_stem_names_count_per_kind():
    net = densedsl.parse("""network s { input 3x16x16
        stem {
            conv 8
            norm
            relu
            dropout 0.1
            conv 8
            maxpool kernel=2 stride=2
        }
        dense layers=1 growth=2
        head classes=2 norm=false
    }""").network
    model = DenseNet(net)
    names = [name for name, _ in model.features.named_children()]
    assert names == ["conv0", "norm0", "relu0", "drop0", "conv1", "pool0", "denseblock1"]


def test_layer_children_in_execution_order():
    pre = DenseLayer(8, 4, bottleneck=4, dropout=0.2)
    assert [k for k, _ in pre.named_children()] == ["norm1", "relu1", "conv1", "drop1", "norm2", "relu2", "conv2", "drop2"]
    post = DenseLayer(8, 4, bottleneck=4, order="post")
    assert [k for k, _ in post.named_children()] == ["conv1", "norm1", "relu1", "conv2", "norm2", "relu2"]
    assert post.norm1.num_features == 16 and pre.norm1.num_features == 8
    plain = DenseLayer(8, 4)
    assert [k for k, _ in plain.named_children()] == ["norm1", "relu1", "conv1"]
    assert plain.conv1.kernel_size == (3, 3) and plain.conv1.padding == (1, 1)


def test_init_like_torchvision():
    model = model_of(d2l_fashion_mnist())
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            assert torch.all(m.bias == 0)
    assert torch.all(model.classifier.bias == 0)
    w = model.features.conv0.weight
    assert abs(w.std().item() - (2 / w[0].numel()) ** 0.5) < 0.02  # kaiming_normal_, fan_in


# --- the seeds' examples -----------------------------------------------------------------------

def test_seed_dense_block_and_transition_shapes():
    block = DenseBlock(3, 2, 10)
    y = block(torch.randn(4, 3, 8, 8))
    assert y.shape == (4, 23, 8, 8)
    assert Transition(23, 10)(y).shape == (4, 10, 4, 4)


def test_seed_d2l_model():
    model = model_of(d2l_fashion_mnist())
    assert sum(p.numel() for p in model.parameters()) == 758_226
    assert model.classifier.in_features == 248
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 96, 96)).shape == (1, 10)


# --- inference paths ---------------------------------------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_path_matches_concat_path(channels_last):
    model = model_of(small())
    randomise_norms(model)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fast = model(x)
    with torch.inference_mode():
        fast2 = model(x)
    ref = reference_forward(model, x)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast2, ref, rtol=1e-4, atol=1e-5)


def test_folded_weights_follow_parameter_updates():
    model = model_of(small()).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        model(x)
        randomise_norms(model)  # in place: versions change, the fold cache must notice
        fast = model(x)
    torch.testing.assert_close(fast, reference_forward(model, x), rtol=1e-4, atol=1e-5)


def test_block_inference_writes_one_buffer():
    block = accelerate(DenseBlock(3, 3, 5, bottleneck=2)).eval()
    randomise_norms(block)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        y = block(x)
    with torch.enable_grad():
        ref = block(x.requires_grad_())
    torch.testing.assert_close(y, ref.detach(), rtol=1e-4, atol=1e-5)
    assert torch.equal(y[:, :3], x.detach())


def test_headless_network_returns_feature_map():
    net = densedsl.parse("network h { input 3x8x8\n dense layers=2 growth=5\n }").network
    model = model_of(net).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 8, 8))
    assert y.shape == (2, 13, 8, 8) and y.is_contiguous()
    with pytest.raises(AttributeError):
        model.get_classifier()


def test_window_head_flattens_the_pooled_map():
    net = densedsl.parse("""network k { input 3x8x8
        stem {
            conv 12 padding=1
        }
        dense layers=2 growth=6
        transition compression=0.5
        head classes=4 kernel=2 stride=2 dropout=0.5
    }""").network
    model = model_of(net)
    assert model.classifier.in_features == 12 * 2 * 2
    randomise_norms(model)
    model.eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert model(x).shape == (3, 4)
        torch.testing.assert_close(model(x), reference_forward(model, x), rtol=1e-4, atol=1e-5)


# --- memory modes ------------------------------------------------------------------------------

def _step(model, x, seed=1):
    torch.manual_seed(seed)
    model.zero_grad()
    y = model(x)
    y.square().sum().backward()
    return y.detach()


def test_efficient_gradients_equal_standard():
    standard = model_of(small())
    efficient = model_of(small(), memory="efficient")
    efficient.load_state_dict(standard.state_dict())
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(_step(efficient, x), _step(standard, x))
    for (name, p), q in zip(standard.named_parameters(), efficient.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    # running statistics move once per forward, not again when backward recomputes
    for (name, a), b in zip(standard.named_buffers(), efficient.buffers()):
        torch.testing.assert_close(b, a, msg=name)




def test_efficient_mode_keeps_less_for_backward():
    net = densedsl.parse("network d { input 16x8x8\n dense layers=8 growth=8 bottleneck=2\n head classes=2\n }").network
    x = torch.randn(2, 16, 8, 8)
    standard = saved_bytes(model_of(net), x, weights=True)
    efficient = saved_bytes(model_of(net, memory="efficient"), x, weights=True)
    assert efficient < 0.5 * standard


def test_set_grad_checkpointing_switches_every_layer():
    model = model_of(small())
    model.set_grad_checkpointing(True)
    assert all(m.memory_efficient for m in model.modules() if isinstance(m, DenseLayer))
    model.set_grad_checkpointing(False)
    assert not any(m.memory_efficient for m in model.modules() if isinstance(m, DenseLayer))


@pytest.mark.parametrize("memory", ["standard", "efficient"])
def test_channels_last_and_bfloat16_autocast(memory):
    model = model_of(small(), memory=memory).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
        y.float().square().mean().backward()
    assert y.dtype == torch.bfloat16 and y.shape == (2, 5)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    torch.testing.assert_close(low.float(), ref, rtol=0.1, atol=0.1)


def test_torchscript_trace():
    model = model_of(small()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_torch_compile():
    net = densedsl.parse("network c { input 3x8x8\n dense layers=2 growth=4 bottleneck=2\n head classes=3\n }").network
    model = model_of(net).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    try:
        from torch._inductor.exc import InductorError
        compiled = torch.compile(model)
        with torch.no_grad():
            got = compiled(x)
    except InductorError as e:  # no working C++ toolchain: an environment problem, not ours
        if "compiler" in str(e).lower() or "CppCompileError" in str(e) or "cc1plus" in str(e):
            pytest.skip(f"torch.compile's C++ toolchain is unavailable: {str(e).splitlines()[0]}")
        raise
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_short_training_lowers_the_loss():
    torch.manual_seed(0)
    net = densedsl.parse("network t { input 3x8x8\n stem {\n conv 8 padding=1\n }\n"
                         " dense layers=2 growth=4 bottleneck=2\n transition\n dense layers=2 growth=4\n"
                         " head classes=3\n }").network
    model = DenseNet(net, memory="efficient")
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(20):  # 15 steps halve the loss for only 8 of seeds 0-11 (either init stream)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# --- timm's entry points ----------------------------------------------------------------------

def test_split_entry_points():
    model = model_of(small()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 6 + 2 * 3, 4, 4)
        assert torch.all(feats >= 0)  # after the head's norm and ReLU
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, 12)
        torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model.get_classifier() is model.classifier
    assert model.num_features == 12 and model.num_classes == 5
    model.reset_classifier(7)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, 12)


def test_feature_info_and_features_only():
    network = small()
    model = model_of(network)
    assert model.feature_info == [
        {"num_chs": 8, "reduction": 1, "module": "features.relu0"},  # a stem without a pool: its output
        {"num_chs": 8 + 3 * 4, "reduction": 1, "module": "features.denseblock1"},
        {"num_chs": 10 + 2 * 4, "reduction": 2, "module": "features.denseblock2"},
        {"num_chs": 6 + 2 * 3, "reduction": 4, "module": "features.denseblock3"},
    ]
    from densedsl.nn.model import DenseNetFeatures
    randomise_norms(model)
    feats = DenseNetFeatures(model)
    x = torch.randn(2, 3, 16, 16)
    for train in (True, False):
        feats.train(train)
        with torch.no_grad():
            out = feats(x)
        assert list(out) == ["stem", "denseblock1", "denseblock2", "denseblock3"]
        assert [tuple(v.shape) for v in out.values()] == [(2, 8, 16, 16), (2, 20, 16, 16), (2, 18, 8, 8), (2, 12, 4, 4)]
    with torch.no_grad():  # eval: the engine's folded stem, split at the tap, and the plain path
        stem = model.features.relu0(model.features.norm0(model.features.conv0(x)))
        torch.testing.assert_close(feats(x)["stem"], stem, rtol=1e-5, atol=1e-5)
        feats.engine = None
        torch.testing.assert_close(feats(x)["stem"], stem)


def test_features_only_engine_taps_the_stem_before_its_pool():
    """The engine folds the stem's BN into its conv; split at the tap, every map is the plain one."""
    network = densedsl.parse(SMALL.replace("        relu\n", "        relu\n        maxpool kernel=3 stride=2 padding=1\n")).network
    model = model_of(network)
    randomise_norms(model)
    from densedsl.nn.model import DenseNetFeatures
    feats = DenseNetFeatures(model).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        fast = feats(x)
        feats.engine = None
        plain = feats(x)
    assert list(fast) == list(plain) == ["stem", "denseblock1", "denseblock2", "denseblock3"]
    assert tuple(fast["stem"].shape) == (2, 8, 16, 16)  # before the pool
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-4, atol=1e-4)


def test_build_model_features_flag():
    model = build_model(small(), features_only=True)
    assert not hasattr(model, "classifier")
    assert set(model(torch.randn(1, 3, 16, 16))) == {"stem", "denseblock1", "denseblock2", "denseblock3"}


def test_build_model_rejects_unknown_memory_mode():
    with pytest.raises(ValueError, match="memory"):
        build_model(small(), memory="tiny")


# --- parity with the analysis ------------------------------------------------------------------

@pytest.mark.parametrize("path", ZOO, ids=[p.stem for p in ZOO])
def test_zoo_counts_equal_analysis(path):
    from torch.utils.flop_counter import FlopCounterMode

    from densedsl.analysis.figures import analyze
    network = densedsl.load(path).network
    a = analyze(network)
    model = DenseNet(network, device="meta")
    assert sum(p.numel() for p in model.parameters()) == a.params
    counter = FlopCounterMode(display=False)
    with counter:
        y = model(torch.empty(1, *network.input, device="meta"))
    assert tuple(y.shape[1:]) == tuple(a.output_shape)
    assert counter.get_total_flops() == a.flops


def test_build_model_runs_the_checks():
    bad = n.Network(name="bad", input=(3, 4, 4), stages=(
        n.DenseBlock(index=1, layers=1, growth=2),
        n.Transition(index=1, compression=Fraction(1, 2), pool=n.Pool(kernel=8, stride=8))),
        head=n.Head(classes=2))
    with pytest.raises(densedsl.SpecError):
        build_model(bad)


# --- weights ------------------------------------------------------------------------------------

def test_load_weights_state_dict_path_and_checkpoint(tmp_path):
    source = model_of(small())
    randomise_norms(source)
    sd = source.state_dict()
    for weights in (
        sd,
        {"model": sd, "epoch": 3},
        {f"module.{k}": v for k, v in sd.items()},
        {f"_orig_mod.{k}": v for k, v in sd.items()},
    ):
        target = DenseNet(small())
        assert load_weights(target, weights) is target
        for k, v in target.state_dict().items():
            assert torch.equal(v, sd[k]), k
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    target = load_weights(DenseNet(small()), str(path))
    assert torch.equal(target.features.norm0.running_var, sd["features.norm0.running_var"])


def test_load_weights_renames_torchvision_legacy_keys():
    source = model_of(small())
    legacy = {}
    for k, v in source.state_dict().items():
        for old in ("norm1", "relu1", "conv1", "norm2", "relu2", "conv2"):
            if "denselayer" in k and f".{old}." in k:
                k = k.replace(f".{old}.", f".{old[:-1]}.{old[-1]}.")
        legacy[k] = v
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    target = load_weights(DenseNet(small()), legacy)
    assert torch.equal(target.features.denseblock1.denselayer1.conv1.weight,
                       source.features.denseblock1.denselayer1.conv1.weight)


def test_load_weights_reports_every_mismatch_at_once():
    sd = model_of(small()).state_dict()
    del sd["features.conv0.weight"]
    sd["features.extra.weight"] = torch.zeros(2)
    sd["classifier.weight"] = torch.zeros(9, 12)
    with pytest.raises(WeightsError) as info:
        load_weights(DenseNet(small()), sd)
    e = info.value
    assert isinstance(e, densedsl.SpecError) and e.diagnostics[0].code.code == "E908"
    text = str(e)
    assert "features.conv0.weight (8x3x3x3)" in text
    assert "features.extra.weight" in text
    assert "classifier.weight: model 5x12, weights 9x12" in text
    assert e.missing == ("features.conv0.weight",) and e.unexpected == ("features.extra.weight",)
    # strict=False forgives missing and unexpected keys, never a wrong shape
    with pytest.raises(WeightsError, match="different shape"):
        load_weights(DenseNet(small()), sd, strict=False)
    del sd["classifier.weight"], sd["classifier.bias"]
    load_weights(DenseNet(small()), sd, strict=False)


def test_load_weights_bad_files(tmp_path):
    with pytest.raises(WeightsError, match="no such weights file"):
        load_weights(DenseNet(small()), tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError) as info:
        load_weights(DenseNet(small()), junk)
    assert info.value.diagnostics[0].file == str(junk)
    with pytest.raises(WeightsError, match="expected a state_dict"):
        load_weights(DenseNet(small()), [1, 2])


@pytest.mark.parametrize("gammas", ["positive and zero", "some negative"])
def test_bn_relu_fold_into_pointwise_convs(gammas):
    """relu(s·x+b) → s·max(x, −b/s) + b folded into 1x1 convs: exact for s ≥ 0, skipped for s < 0."""
    model = model_of(small()).eval()
    randomise_norms(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight[::3] = 0.0  # constant channels: relu(β − μ·0) folds into the bias
                if gammas == "some negative":
                    m.weight[1::3] *= -1
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        fast = model(x)
    torch.testing.assert_close(fast, reference_forward(model, x), rtol=1e-4, atol=1e-5)
    folds = [value for (kind, _), (_, value) in model.engine.folded._cache.items() if kind == "relu_conv"]
    assert folds, "no BN-ReLU-Conv1x1 was considered for folding"
    if gammas == "some negative":
        assert all(f is None for f in folds)
    else:
        assert all(f is not None for f in folds)


# --- the op table, the lowered list and the opt-in engine -------------------------------------

def test_final_norm_is_norm5_whatever_the_block_count():
    """torchvision's DenseNet names it norm5 for 3-block CIFAR models too, so their weights load."""
    keys = DenseNet(small(), device="meta").state_dict()  # three dense blocks
    assert "features.norm5.weight" in keys
    assert not any(k.startswith("features.norm4") for k in keys)


def test_inference_engine_is_an_opt_in_pass_compile_applies():
    assert DenseNet(small()).engine is None
    assert build_model(small()).engine is not None
    assert build_model(small(), engine=False).engine is None
    model = DenseNet(small()).eval()  # the plain path gives the engine's answer
    fast = accelerate(DenseNet(small())).eval()
    fast.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_model_is_built_from_the_analysis_op_list():
    """Every op the analysis lowered is a module of the model, of the op table's type."""
    from densedsl.analysis.figures import analyze
    from densedsl.ir import ops
    a = analyze(small())
    model = DenseNet(small(), lowered=a.lowered, device="meta")
    modules = dict(model.named_modules())
    for node, attrs in a.graph.nodes(data=True):
        if attrs.get("module"):
            op = next(o for o in _all_ops(a.lowered) if o.module == attrs["module"])
            assert type(modules[attrs["module"]]) is type(ops.module(op, {"device": "meta"})), node


def _all_ops(lowered):
    for stage in lowered:
        yield from getattr(stage, "ops", ())
        for layer in getattr(stage, "layers", ()):
            yield from layer


def test_checkpoints_with_the_old_head_norm_name_still_load():
    """densedsl named a 3-block network's final norm norm4 before it followed torchvision."""
    source = model_of(small())
    old = {k.replace("features.norm5.", "features.norm4."): v for k, v in source.state_dict().items()}
    target = load_weights(DenseNet(small()), old)
    assert target.weights_convention == "densedsl before norm5"
    torch.testing.assert_close(target.features.norm5.weight, source.features.norm5.weight)
