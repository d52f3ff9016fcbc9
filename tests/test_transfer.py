"""Weights from elsewhere: `compile --weights` exports a trained model, `train --init` starts a
run from a checkpoint, a bare state_dict or another library's DenseNet layout (issue 14)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from densedsl import cli
from densedsl.train import CHECKPOINT, read_checkpoint

# Tiny, so that an epoch of the 1,797 digits takes about a second on one thread.
SPEC = """network t(classes=10) {
    input 1x8x8
    defaults growth=4 bottleneck=2 compression=0.5
    stem {
        conv 8 kernel=3 padding=1
    }
    dense layers=2
    transition
    dense layers=2
    head classes=classes
}
"""
QUIET = ("--no-progress", "--device", "cpu", "--threads", "1")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_compile_weights_onnx_equals_pytorch_and_says_nothing_of_torchs_own(digits_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from densedsl.train import model_from_checkpoint
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
    from densedsl.compiler import build_model
    from densedsl.spec import parse
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
