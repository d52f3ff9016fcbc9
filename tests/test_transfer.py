"""Weights from elsewhere: `compile --weights` exports a trained model, `train --init` starts a
run from a checkpoint, a bare state_dict or another library's DenseNet layout (issue 14)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_checkpoints import SPEC as CHECKPOINTS_SPEC

from densedsl import cli
from densedsl.training.train import CHECKPOINT, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread

# test_checkpoints' tiny spec (an epoch of the 1,797 digits takes about a second on one thread),
# with the digits' 10 classes by default.
SPEC = CHECKPOINTS_SPEC.replace("network t(classes=3)", "network t(classes=10)")
QUIET = ("--no-progress", "--device", "cpu", "--threads", "1")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> tuple[Path, Path]:
    """(the spec file, the run directory of one epoch on the 10-class digits)."""
    root = tmp_path_factory.mktemp("digits")
    spec = root / "t.dense"
    spec.write_text(SPEC)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(["train", str(spec), "--data", "digits", "--epochs", "1",
                         "--out", str(root / "run"), *QUIET]) == 0
    finally:
        torch.set_num_threads(threads)
    return spec, root / "run"


def _write_folder(root: Path, classes=("circle", "square", "stripe"), per_class=(6, 2)) -> Path:
    """A 3-class image folder of generated 10x12 pictures, one pattern a class."""
    from PIL import Image, ImageDraw
    for split, n in zip(("train", "test"), per_class):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                image = Image.new("RGB", (12, 10), (20 * i, 0, 0))
                draw = ImageDraw.Draw(image)
                [draw.ellipse, draw.rectangle, draw.line][c]((2, 2, 9, 7), fill=(255, 255, 255))
                image.save(root / split / name / f"{i}.png")
    return root


# --- compile --weights -------------------------------------------------------------------------

def test_compile_weights_pt_holds_exactly_the_checkpoints_weights(digits_run, tmp_path, capsys):
    spec, run_dir = digits_run
    out = tmp_path / "m.pt"
    code, _, err = run(capsys, "compile", spec, "--weights", run_dir / CHECKPOINT, "-o", out)
    assert code == 0, err
    assert f"weights from {run_dir / CHECKPOINT}" in err
    written = torch.load(out, weights_only=True)
    trained = read_checkpoint(run_dir)["model"]
    assert written.keys() == trained.keys()
    assert all(torch.equal(written[k], trained[k]) for k in trained)
    # The run directory names its checkpoint, as for eval.
    code, _, err = run(capsys, "compile", spec, "--weights", run_dir, "-o", tmp_path / "d.pt")
    assert code == 0, err
    assert all(torch.equal(v, written[k]) for k, v in torch.load(tmp_path / "d.pt", weights_only=True).items())


@pytest.mark.slow  # a fresh interpreter and the ONNX exporter: ~15 s
def test_compile_weights_onnx_equals_pytorch_and_says_nothing_of_torchs_own(digits_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from densedsl.training.train import model_from_checkpoint
    spec, run_dir = digits_run
    out = tmp_path / "m.onnx"
    # A fresh process, as a user runs it: torch's exporter logs its registry once per process.
    done = subprocess.run([sys.executable, "-m", "densedsl", "compile", str(spec), "--weights", str(run_dir),
                           "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [f"{out}: t, {done.stderr.split(', ')[1]}, weights from {run_dir}"]
    model, _ = model_from_checkpoint(run_dir)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort.InferenceSession(str(out)).run(None, {"input": x.numpy()})[0]
    assert abs(got - expected).max() < 1e-4


def test_compile_weights_that_do_not_fit_write_nothing(digits_run, tmp_path, capsys):
    spec, run_dir = digits_run
    out = tmp_path / "m3.pt"
    code, _, err = run(capsys, "compile", spec, "--set", "classes=3", "--weights", run_dir, "-o", out)
    assert code == 1 and "E908" in err and "classifier.weight: model 3x16, weights 10x16" in err
    assert not out.exists()
    code, _, err = run(capsys, "compile", spec, "--weights", tmp_path / "none.pt", "-o", out)
    assert code == 1 and "no such weights file" in err and not out.exists()


# --- train --init ------------------------------------------------------------------------------

def test_fine_tune_a_3_class_folder_from_a_10_class_digits_checkpoint(digits_run, tmp_path, capsys):
    spec, run_dir = digits_run
    folder = _write_folder(tmp_path / "shapes")
    code, out, err = run(capsys, "train", spec, "--set", "classes=3", "--data", f"folder:{folder}",
                         "--init", run_dir, "--epochs", "1", "--batch-size", "6", "--out", tmp_path / "ft", *QUIET)
    assert code == 0, err
    taken = len(read_checkpoint(run_dir)["model"]) - 2
    assert (f"initial weights from {run_dir} (densedsl/torchvision layout): {taken} tensors taken, "
            "2 left at their initialisation") in out
    assert "different shape, left at initialisation (2):" in out
    assert "classifier.weight (model 3x16, weights 10x16)" in out and "classifier.bias (model 3, weights 10)" in out
    ckpt = read_checkpoint(tmp_path / "ft")
    assert ckpt["config"]["init"] == str(run_dir.absolute()) and ckpt["data"]["classes"] == 3


def test_with_lr_0_every_taken_weight_is_unchanged_after_an_epoch(digits_run, tmp_path, capsys):
    spec, run_dir = digits_run
    code, _, err = run(capsys, "train", spec, "--set", "classes=3", "--data", "synthetic:48", "--lr", "0",
                       "--init", run_dir, "--epochs", "1", "--batch-size", "16", "--out", tmp_path / "z", *QUIET)
    assert code == 0, err
    start = read_checkpoint(run_dir)["model"]
    after = read_checkpoint(tmp_path / "z")["model"]
    from densedsl.language.spec import parse
    from densedsl.nn.build import build_model
    parameters = {name for name, _ in build_model(parse(SPEC).network).named_parameters()}
    compared = [k for k in parameters if not k.startswith("classifier.")]
    assert len(compared) == len(parameters) - 2
    assert all(torch.equal(after[k], start[k]) for k in compared)
    # ...and the classifier, left at its initialisation, is not the checkpoint's.
    assert after["classifier.weight"].shape == (3, 16)


def test_init_from_a_bare_state_dict_of_another_convention(digits_run, tmp_path, capsys):
    """A state_dict saved from DistributedDataParallel (`module.` keys), as a .pth."""
    spec, run_dir = digits_run
    state = {"module." + k: v for k, v in read_checkpoint(run_dir)["model"].items()}
    torch.save(state, tmp_path / "ddp.pth")
    code, out, err = run(capsys, "train", spec, "--data", "synthetic:48", "--lr", "0", "--init",
                         tmp_path / "ddp.pth", "--epochs", "1", "--batch-size", "16", "--out", tmp_path / "r", *QUIET)
    assert code == 0, err
    assert f"{len(state)} tensors taken, every tensor of the model" in out
    after = read_checkpoint(tmp_path / "r")["model"]
    assert torch.equal(after["classifier.weight"], state["module.classifier.weight"])


def test_init_keys_that_do_not_fit_are_an_error_unless_partial(digits_run, tmp_path, capsys):
    spec, run_dir = digits_run
    state = dict(read_checkpoint(run_dir)["model"])
    state["extra.weight"] = torch.zeros(2)
    del state["features.norm5.weight"]
    torch.save(state, tmp_path / "odd.pt")
    args = ("train", spec, "--data", "synthetic:48", "--init", tmp_path / "odd.pt", "--epochs", "1",
            "--batch-size", "16", *QUIET)
    code, _, err = run(capsys, *args, "--out", tmp_path / "a")
    assert code == 1 and "E908" in err and "--init-partial" in err
    assert "features.norm5.weight" in err and "extra.weight" in err
    assert not (tmp_path / "a").exists()
    code, out, err = run(capsys, *args, "--out", tmp_path / "b", "--init-partial")
    assert code == 0, err
    assert "not in the weights, left at initialisation (1):\n    features.norm5.weight" in out
    assert "in the weights, not in the model, ignored (1):\n    extra.weight" in out


def test_init_with_resume_is_refused(digits_run, capsys):
    spec, run_dir = digits_run
    code, _, err = run(capsys, "train", spec, "--data", "digits", "--resume", "--out", run_dir,
                       "--init", run_dir, *QUIET)
    assert code == 1 and "E116" in err and "--init with --resume" in err


def test_train_help_shows_percent_signs_once(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert "50% and 75%" in out and "%%" not in out


# --- fine-tuning settings, resuming, extending ---------------------------------------------------

SMALL = dict(data="synthetic:48", batch_size=16, threads=1, device="cpu", progress=False)


def _train(spec_text=SPEC, **kwargs):
    from densedsl.training.train import train
    return train(spec_text, **{**SMALL, **kwargs})


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_extending_a_finished_run_equals_the_longer_run_bit_for_bit(tmp_path):
    lines: list[str] = []
    # Milestone 0.9 falls after the last epoch of both a 2- and a 3-epoch run, so every epoch done
    # ran at the learning rate the 3-epoch run uses: the extension is exact.
    _train(epochs=2, milestones=(0.9,), out=tmp_path / "a")
    _train(epochs=3, out=tmp_path / "a", resume=True, log=lines.append)
    _train(epochs=3, milestones=(0.9,), out=tmp_path / "b")
    assert _equal(read_checkpoint(tmp_path / "a")["model"], read_checkpoint(tmp_path / "b")["model"])
    assert ("extending the run from 2 to 3 epochs: the remaining epochs follow the 3-epoch schedule; "
            "the result is exactly that of a 3-epoch run") in lines
    assert read_checkpoint(tmp_path / "a")["config"]["epochs"] == 3


def test_an_extension_the_schedule_makes_inexact_says_which_epochs_differ(tmp_path):
    lines: list[str] = []
    # The paper's milestones are fractions: 50% of 2 epochs is after epoch 1, of 4 after epoch 2.
    _train(epochs=2, out=tmp_path / "a")
    result = _train(epochs=4, out=tmp_path / "a", resume=True, log=lines.append)
    assert result.epochs == 4
    assert any(line.endswith("it is not that of a 4-epoch run from the start (epoch 2 ran at lr 0.01 "
                             "where a 4-epoch run uses 0.1)") for line in lines), lines
    assert [row["lr"] for row in result.metrics][2:] == [pytest.approx(0.01), pytest.approx(0.001)]


def test_resume_refuses_fewer_epochs_and_every_fine_tuning_setting_that_differs(tmp_path):
    from densedsl.core.diagnostics import SpecError
    _train(epochs=2, out=tmp_path / "a")
    changes = dict(epochs=1, optimizer="adamw", schedule="cosine", label_smoothing=0.1, grad_clip=1.0,
                   freeze=("stem",), head_lr=0.5)
    for key, value in changes.items():
        with pytest.raises(SpecError) as e:
            _train(out=tmp_path / "a", resume=True, **{key: value})
        assert [x.code.code for x in e.value.diagnostics] == ["E116"] and f"{key} " in str(e.value), key


def test_adamw_cosine_warmup_smoothing_and_clipping_resume_bit_identical(tmp_path):
    settings = dict(epochs=3, optimizer="adamw", lr=0.01, schedule="cosine", warmup=1, label_smoothing=0.1,
                    grad_clip=0.5)
    whole = _train(out=tmp_path / "whole", **settings)
    _train(out=tmp_path / "cut", callback=lambda row: row["epoch"] == 1, **settings)  # "killed" after 1
    resumed = _train(out=tmp_path / "cut", resume=True)  # every setting from the checkpoint
    assert _equal(read_checkpoint(tmp_path / "whole")["model"], read_checkpoint(tmp_path / "cut")["model"])
    config = read_checkpoint(tmp_path / "cut")["config"]
    assert {k: config[k] for k in settings} == settings
    # Warm-up: half the rate in epoch 1, the full rate in epoch 2, then half a cosine.
    assert [row["lr"] for row in whole.metrics] == pytest.approx([0.005, 0.01, 0.005])
    assert [row["lr"] for row in resumed.metrics] == [row["lr"] for row in whole.metrics]


def test_freeze_features_trains_the_classifier_alone_at_its_own_rate(tmp_path):
    lines: list[str] = []
    start = _train(epochs=1, out=tmp_path / "start")
    result = _train(epochs=1, out=tmp_path / "ft", init=tmp_path / "start", freeze=("features",), head_lr=0.05,
                    log=lines.append)
    before, after = read_checkpoint(tmp_path / "start")["model"], read_checkpoint(tmp_path / "ft")["model"]
    parameters = {name for name, _ in start.model.named_parameters()}
    assert all(torch.equal(before[k], after[k]) for k in parameters if k.startswith("features."))
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert "frozen features (not trained)" in [" ".join(line.split()) for line in lines]
    assert "head learning rate 0.05 (classifier)" in [" ".join(line.split()) for line in lines]
    optimizer = read_checkpoint(tmp_path / "ft")["optimizer"]
    # Nothing but the head is trained: one parameter group, at the head's rate; the row's lr is
    # the base rate the header names, head_lr the head's (issue 23: lr showed the head's rate).
    assert [g["initial_lr"] for g in optimizer["param_groups"]] == [0.05]
    assert result.metrics[0]["lr"] == pytest.approx(result.config.lr) and result.metrics[0]["head_lr"] == 0.05
    assert result.config.freeze == ("features",)


def test_freeze_a_stage_the_network_lacks_is_refused_naming_the_stages(tmp_path):
    from densedsl.core.diagnostics import SpecError
    with pytest.raises(SpecError) as e:
        _train(epochs=1, out=tmp_path / "x", freeze=("denseblock9",))
    assert [x.code.code for x in e.value.diagnostics] == ["E105"]
    assert "features, stem, conv0, denseblock1, transition1, denseblock2, norm5" in str(e.value)
    assert not (tmp_path / "x").exists()


def test_a_checkpoint_from_before_the_fine_tuning_settings_still_resumes(tmp_path):
    from densedsl.training import checkpoint_schema
    _train(epochs=1, out=tmp_path / "old")
    ckpt = torch.load(tmp_path / "old" / CHECKPOINT, weights_only=True)
    for key in checkpoint_schema.LATER_SETTINGS:
        del ckpt["config"][key]
    torch.serialization.set_crc32_options(True)
    torch.save(ckpt, tmp_path / "old" / CHECKPOINT)
    result = _train(epochs=2, out=tmp_path / "old", resume=True)
    assert result.epochs == 2 and result.config.optimizer == "sgd" and result.config.schedule == "step"


@pytest.mark.parametrize("option, value", [
    ("--label-smoothing", "1"), ("--label-smoothing", "-0.1"), ("--grad-clip", "0"), ("--grad-clip", "nan"),
    ("--warmup", "-1"), ("--head-lr", "-1"), ("--freeze", "dense-block"), ("--optimizer", "adam"),
    ("--schedule", "linear")])
def test_fine_tuning_options_are_checked_where_they_are_parsed(option, value, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "x.dense", "--data", "digits", option, value])
    assert e.value.code == 2 and option in capsys.readouterr().err


def test_grad_clip_bounds_every_step_and_label_smoothing_changes_the_training_loss(tmp_path):
    start = _train(epochs=1, out=tmp_path / "start")
    before = read_checkpoint(tmp_path / "start")["model"]
    clipped = _train(epochs=1, out=tmp_path / "c", init=tmp_path / "start", grad_clip=1e-9, weight_decay=0.0)
    after = read_checkpoint(tmp_path / "c")["model"]
    # 3 steps of lr 0.1 with a gradient norm of at most 1e-9 move no parameter by more than 1e-9.
    moved = max(float((after[k] - before[k]).abs().max()) for k, _ in start.model.named_parameters())
    assert moved < 1e-9
    plain = _train(epochs=1)
    smoothed = _train(epochs=1, label_smoothing=0.5)
    assert smoothed.metrics[0]["train_loss"] != plain.metrics[0]["train_loss"]
    assert smoothed.metrics[0]["test_loss"] != plain.metrics[0]["test_loss"]  # other weights follow


# --- usability ------------------------------------------------------------------------------------

def test_eval_finds_folder_data_from_another_directory_and_hints_at_data_when_it_moved(tmp_path, monkeypatch,
                                                                                     capsys):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    _write_folder(Path("shapes"))
    Path("t.dense").write_text(SPEC)
    code, _, err = run(capsys, "train", "t.dense", "--set", "classes=3", "--data", "folder:shapes",
                       "--epochs", "1", "--batch-size", "6", "--out", "run", *QUIET)
    assert code == 0, err
    assert read_checkpoint("run")["data"]["name"] == f"folder:{tmp_path / 'work' / 'shapes'}"
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "eval", "work/run", "--device", "cpu")
    assert code == 0 and "accuracy" in out, err
    (tmp_path / "work" / "shapes").rename(tmp_path / "moved")
    code, _, err = run(capsys, "eval", "work/run", "--device", "cpu")
    assert code == 1 and "E901" in err
    assert f"hint: the checkpoint was trained on folder:{tmp_path / 'work' / 'shapes'}; pass --data folder:DIR" in err
    code, out, err = run(capsys, "eval", "work/run", "--device", "cpu", "--data", "folder:moved")
    assert code == 0 and "accuracy" in out, err
    # Resuming with the path as first given (relative) is the same data, not an E116 clash.
    monkeypatch.chdir(tmp_path / "work")
    (tmp_path / "moved").rename(tmp_path / "work" / "shapes")
    code, _, err = run(capsys, "train", "t.dense", "--set", "classes=3", "--data", "folder:shapes", "--epochs", "2",
                       "--resume", "--out", "run", *QUIET)
    assert code == 0, err


# --- augmentation -------------------------------------------------------------------------------

def test_resized_crop_keeps_the_shape_stays_inside_the_image_and_follows_the_seed():
    from densedsl.training import datasets
    images = torch.arange(4 * 3 * 16 * 16, dtype=torch.int64).remainder(256).to(torch.uint8).view(4, 3, 16, 16)
    norm = dict(pixel_max=255.0, mean=torch.zeros(3), std=torch.ones(3))

    def crop(seed: int) -> torch.Tensor:
        return datasets.prepare_batch(images, augment="resized-crop",  # the crop alone, no flip
                                      generator=torch.Generator().manual_seed(seed), **norm)
    plain = datasets.prepare_batch(images, **norm)
    assert crop(0).shape == plain.shape and torch.equal(crop(0), crop(0)) and not torch.equal(crop(0), crop(1))
    assert not torch.equal(crop(0), plain)
    assert crop(0).min() >= plain.min() and crop(0).max() <= plain.max()  # interpolated, never padded
    flat = torch.full((2, 1, 9, 9), 77, dtype=torch.uint8)
    out = datasets.prepare_batch(flat, augment="resized-crop+flip", generator=torch.Generator().manual_seed(3),
                                 pixel_max=255.0, mean=torch.zeros(1), std=torch.ones(1))
    assert torch.allclose(out, torch.full_like(out, 77 / 255))


def test_standard_augmentation_is_each_data_sets_own(tmp_path):
    folder = _write_folder(tmp_path / "shapes")
    on_folder = _train(epochs=1, data=f"folder:{folder}", batch_size=6, augment="standard", **{"classes": 3})
    assert on_folder.config.augment == "resized-crop+flip"
    assert _train(epochs=1, augment="standard").config.augment == "none"
    assert _train(epochs=1, data=f"folder:{folder}", batch_size=6, classes=3).config.augment == "resized-crop+flip"


def test_head_lr_is_a_second_parameter_group_beside_the_stages_still_trained(tmp_path):
    _train(epochs=1, out=tmp_path / "r", freeze=("stem",), head_lr=0.05)
    optimizer = read_checkpoint(tmp_path / "r")["optimizer"]
    assert [g["initial_lr"] for g in optimizer["param_groups"]] == [0.1, 0.05]
    assert len(optimizer["param_groups"][1]["params"]) == 2  # classifier.weight and .bias


def test_compile_weights_to_python_source_checks_the_fit_and_says_where_the_weights_go(digits_run, tmp_path,
                                                                                       capsys):
    spec, run_dir = digits_run
    code, _, err = run(capsys, "compile", spec, "--weights", run_dir, "-o", tmp_path / "m.py")
    assert code == 0, err
    assert "note: " in err and "is source only" in err and (tmp_path / "m.py").exists()
    code, _, err = run(capsys, "compile", spec, "--set", "classes=3", "--weights", run_dir, "-o", tmp_path / "n.py")
    assert code == 1 and "E908" in err and not (tmp_path / "n.py").exists()
