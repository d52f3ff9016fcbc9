"""Weights that used to load wrong without a word (issue 24): two keys for one tensor, values no
model can take (NaN, complex, boolean, integer, not a tensor, sparse, meta), views far larger than
their file, `--init` that takes nothing, and mismatch reports cut mid-line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import densedsl
from densedsl import cli
from densedsl.core.diagnostics import SpecError
from densedsl.nn import weights
from densedsl.nn.build import build_model
from densedsl.nn.weights import WeightsError, load_weights, non_finite_count
from densedsl.training import checkpoint_schema
from densedsl.training.transfer import initialise

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread

from networks import two_block_text  # noqa: E402

SPEC = two_block_text("w", "1x8x8")
SPEC_1D = SPEC.replace("input 1x8x8", "input 1x64")
QUIET = ("--no-progress", "--device", "cpu", "--threads", "1")
NORM = "features.denseblock1.denselayer1.norm1.weight"
CONV = "features.conv0.weight"


def model(text: str = SPEC) -> torch.nn.Module:
    return build_model(densedsl.parse(text).network)


@pytest.fixture()
def spec(tmp_path) -> Path:
    path = tmp_path / "w.dense"
    path.write_text(SPEC)
    return path


@pytest.fixture()
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(model().state_dict())


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def saved(tmp_path: Path, state: dict, name: str = "w.pt") -> Path:
    torch.save(state, tmp_path / name)
    return tmp_path / name


# --- 1. two keys for one tensor ------------------------------------------------------------------

COLLISIONS = {
    "torchvision legacy beside native": NORM.replace("norm1.", "norm.1."),
    "DistributedDataParallel prefix beside the plain key": "module." + NORM,
    "MONAI beside native": NORM.replace("denselayer1.", "denselayer1.layers."),
}


@pytest.mark.parametrize("other", COLLISIONS.values(), ids=COLLISIONS.keys())
def test_a_tensor_under_two_names_is_refused_naming_both(state, tmp_path, spec, capsys, other):
    state[other] = torch.zeros_like(state[NORM])  # later in the file: it used to win
    path = saved(tmp_path, state)
    with pytest.raises(WeightsError) as e:
        load_weights(model(), path)
    message = str(e.value)
    assert f"'{NORM}'" in message and f"'{other}'" in message and "twice" in message
    code, _, err = run(capsys, "compile", spec, "--weights", path, "-o", tmp_path / "m.pt")
    assert code == 1 and "E908" in err and f"'{other}'" in err
    assert not (tmp_path / "m.pt").exists()
    with pytest.raises(SpecError, match="twice"):
        initialise(model(), path, partial=True)


def test_train_init_refuses_a_collision_before_training(state, tmp_path, spec, capsys):
    state["module." + NORM] = torch.zeros_like(state[NORM])
    code, _, err = run(capsys, "train", spec, "--data", "synthetic:16", "--epochs", "1", "--init",
                       saved(tmp_path, state), "--out", tmp_path / "run", *QUIET)
    assert code == 1 and "E908" in err and f"'module.{NORM}'" in err
    assert not (tmp_path / "run").exists()


# --- 2. values no model can take -----------------------------------------------------------------

UNUSABLE = {
    "nan": (lambda t: t.clone().fill_(float("nan")), "of 72 values are NaN or infinite"),
    "inf": (lambda t: t.clone().index_fill_(0, torch.tensor([1]), float("inf")), "9 of 72 values are NaN or infinite"),
    "complex": (lambda t: t.to(torch.complex64), "torch.complex64 values where the model holds floating-point"),
    "bool": (lambda t: t.bool(), "torch.bool values where the model holds floating-point"),
    "int64": (lambda t: t.long(), "torch.int64 values where the model holds floating-point"),
    "string": (lambda t: "hello", "a str, not a tensor"),
    "sparse": (lambda t: t.to_sparse(), "a sparse_coo tensor"),
    "meta": (lambda t: torch.empty(t.shape, device="meta"), "a meta tensor"),
}


@pytest.mark.parametrize("make, words", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_unusable_values_are_refused_naming_key_and_kind(state, tmp_path, spec, capsys, make, words):
    state[CONV] = make(state[CONV])
    path = saved(tmp_path, state)
    code, _, err = run(capsys, "compile", spec, "--weights", path, "-o", tmp_path / "m.pt")
    assert code == 1 and "E908" in err and "internal error" not in err
    assert f"{CONV}: " in err and words in err
    assert "weights scalar" not in err
    assert not (tmp_path / "m.pt").exists()
    with pytest.raises(WeightsError) as e:  # strict=False forgives missing keys, never these
        load_weights(model(), path, strict=False)
    assert e.value.unusable and words in e.value.unusable[0]
    with pytest.raises(SpecError, match=re.escape(words)):
        initialise(model(), path, partial=True)


def test_render_heatmap_refuses_nan_weights(state, tmp_path, spec, capsys):
    pytest.importorskip("matplotlib")
    state[CONV] = state[CONV].clone().fill_(float("nan"))
    code, _, err = run(capsys, "render", spec, "--heatmap", "--weights", saved(tmp_path, state),
                       "-o", tmp_path / "h.png")
    assert code == 1 and "NaN or infinite" in err and not (tmp_path / "h.png").exists()


def test_an_integer_step_count_still_loads(state, tmp_path):
    """num_batches_tracked is the model's integer tensor: integers are what it takes."""
    key = next(k for k in state if k.endswith("num_batches_tracked"))
    state[key] = torch.tensor(7, dtype=torch.int32)
    loaded = load_weights(model(), saved(tmp_path, state))
    assert int(loaded.state_dict()[key]) == 7


def test_init_with_no_tensor_that_fits_is_an_error(state, tmp_path, spec, capsys):
    foreign = {"encoder." + k: v for k, v in state.items()}  # 0 of 36 keys match
    path = saved(tmp_path, foreign)
    with pytest.raises(SpecError) as e:
        initialise(model(), path, partial=True)
    assert "no tensor of the initial weights fits the model" in str(e.value)
    code, _, err = run(capsys, "train", spec, "--data", "synthetic:16", "--epochs", "1", "--init", path,
                       "--init-partial", "--out", tmp_path / "run", *QUIET)
    assert code == 1 and "no tensor of the initial weights fits" in err and not (tmp_path / "run").exists()


def test_init_that_takes_only_a_classifier_of_the_right_shape_still_runs(state, tmp_path):
    """One fitting tensor is a (partial) start, not an error."""
    path = saved(tmp_path, {"classifier.bias": torch.ones(3)})
    target = model()
    result = initialise(target, path, partial=True)
    assert result.taken == ("classifier.bias",) and torch.equal(target.classifier.bias, torch.ones(3))


# --- 3. crafted tensors ----------------------------------------------------------------------------

@pytest.fixture()
def bounded_scans(monkeypatch):
    """torch.isfinite refusing any input larger than 10^6 elements: a mask of a crafted view's
    10^10 elements would take 10 GB (the test fails instead of allocating it)."""
    real = torch.isfinite
    sizes = []

    def isfinite(t):
        sizes.append(t.numel())
        assert t.numel() <= 10**6, f"isfinite over {t.numel():,} elements"
        return real(t)
    monkeypatch.setattr(torch, "isfinite", isfinite)
    return sizes


def test_a_huge_stride_0_view_is_refused_by_shape_without_being_scanned(state, tmp_path, spec, capsys,
                                                                       bounded_scans):
    state[CONV] = torch.empty(1).expand(10**5, 10**5)  # 4 bytes in the file, 10^10 elements
    code, _, err = run(capsys, "compile", spec, "--weights", saved(tmp_path, state), "-o", tmp_path / "m.pt")
    assert code == 1 and f"{CONV}: model 8x1x3x3, weights 100000x100000" in err


def test_the_checkpoint_schema_scans_a_huge_view_within_its_storage(bounded_scans):
    view = torch.zeros(1).expand(10**5, 10**5)
    assert checkpoint_schema._finite_tensor(view, "model.x") is None
    assert max(bounded_scans) == 1
    with pytest.raises(checkpoint_schema._Invalid, match="1 non-finite"):
        checkpoint_schema._finite_tensor(torch.full((1,), float("nan")).expand(10**5, 10**5), "model.x")
    with pytest.raises(checkpoint_schema._Invalid, match="must be a dense tensor"):
        checkpoint_schema._finite_tensor(torch.empty(3, device="meta"), "model.x")


def test_non_finite_count_reads_every_value_of_ordinary_tensors():
    t = torch.zeros(4, 5)
    t[1, 2], t[3, 4] = float("nan"), float("-inf")
    assert non_finite_count(t) == 2
    assert non_finite_count(t.t()) == 2            # a non-contiguous view
    assert non_finite_count(t[:, :2]) == 0         # a slice sees its own values only
    assert non_finite_count(t.to(torch.complex64)) == 2
    assert non_finite_count(torch.zeros(3, dtype=torch.int64)) == 0
    assert non_finite_count(torch.full((4,), 3e38)) == 0  # finite values whose sum overflows
    big = torch.zeros(3 * weights._SCAN + 5)
    big[-1] = float("nan")
    assert non_finite_count(big) == 1              # past the first chunks


def test_a_crafted_densedsl_checkpoint_with_a_meta_tensor_is_e908(tmp_path, spec, capsys):
    code, _, err = run(capsys, "train", spec, "--data", "synthetic:16", "--epochs", "1", "--out", tmp_path / "run",
                       *QUIET)
    assert code == 0, err
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    ckpt["model"][CONV] = torch.empty(8, 1, 3, 3, device="meta")
    torch.serialization.set_crc32_options(True)
    path = saved(tmp_path, ckpt, "meta.pt")
    code, _, err = run(capsys, "compile", spec, "--weights", path, "-o", tmp_path / "m.pt")
    assert code == 1 and "E908" in err and f"'model.{CONV}' must be a dense tensor" in err


# --- 4. mismatch reports -------------------------------------------------------------------------

def test_2d_weights_into_a_1d_spec_state_the_cause_in_whole_lines(state, tmp_path, capsys):
    spec_1d = tmp_path / "w1.dense"
    spec_1d.write_text(SPEC_1D)
    path = saved(tmp_path, state)
    code, _, err = run(capsys, "compile", spec_1d, "--weights", path, "-o", tmp_path / "m.pt")
    assert code == 1 and "the weights are for 2-D convolutions, the spec is 1-D" in err
    listed = [line for line in err.splitlines() if line.startswith("  features.")]
    convolutions = sum(1 for k, v in state.items() if v.dim() == 4)
    assert convolutions == 10 and "different shapes (10):" in err
    assert len(listed) == 8 and "  … and 2 more" in err    # lines are counted, not characters
    assert all(line.endswith(("x3x3", "x1x1")) for line in listed)  # none cut in the middle
    assert "rank the weights were trained with" in err
    code, _, err = run(capsys, "train", spec_1d, "--data", "synthetic:16", "--epochs", "1", "--init", path,
                       "--init-partial", "--out", tmp_path / "run", *QUIET)
    assert code == 1 and "the weights are for 2-D convolutions, the spec is 1-D" in err
    assert not (tmp_path / "run").exists()


def test_a_long_listing_is_never_cut_in_a_line(state, tmp_path, spec, capsys):
    """Long keys and eight of them: far past the 500 characters a message line may have."""
    long = {f"features.an_extra_module_with_a_long_name_{i:02d}.weight": torch.zeros(1) for i in range(12)}
    code, _, err = run(capsys, "compile", spec, "--weights", saved(tmp_path, {**state, **long}),
                       "-o", tmp_path / "m.pt")
    assert code == 1 and " … " not in err.replace("  … and 4 more", "")
    assert all(f"  {k} (1)" in err for k in sorted(long)[:8]) and "  … and 4 more" in err


def test_the_classifier_hint_is_worded_for_the_caller(state, tmp_path, capsys):
    path = saved(tmp_path, state)
    three = tmp_path / "w.dense"
    three.write_text(SPEC.replace("classes=3", "classes=5"))
    code, _, err = run(capsys, "compile", three, "--weights", path, "-o", tmp_path / "m.pt")
    assert code == 1 and "densedsl train SPEC --init WEIGHTS" in err and "strict=False" not in err
    with pytest.raises(WeightsError) as e:
        load_weights(model(SPEC.replace("classes=3", "classes=5")), path)
    (hint,) = [x.hint for x in e.value.diagnostics]
    assert "strict=False" in hint and "--init" not in hint


def test_keys_with_control_characters_print_escaped_on_one_line(state, tmp_path):
    state["evil\n\x1b[2Jkey"] = torch.zeros(1)
    with pytest.raises(WeightsError) as e:
        load_weights(model(), saved(tmp_path, state))
    assert "evil\\x0a\\x1b[2Jkey (1)" in str(e.value)
