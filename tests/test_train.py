"""The training loop, checkpoints and resume, evaluation, the CLI commands, and the heat map."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import densedsl
from densedsl import cli
from densedsl.core.diagnostics import SpecError
from densedsl.training import checkpoint_schema
from densedsl.training.train import CHECKPOINT, RunLock, default_run_dir, evaluate, read_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]

# Dropout and crop+flip make the resume tests exercise every random stream.
SPEC = """network t(classes=3) {
    input 1x8x8
    defaults growth=4 bottleneck=2 compression=0.5 dropout=0.1
    stem {
        conv 8 kernel=3 padding=1
    }
    dense layers=2
    transition
    dense layers=2
    head classes=classes
}
"""
FAST = dict(data="synthetic:64", batch_size=16)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread


def _codes(e: SpecError) -> list[str]:
    return [diag.code.code for diag in e.diagnostics]


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "t.dense"
    path.write_text(SPEC)
    return path


# --- the loop and the run directory ---------------------------------------------------------

def test_train_writes_a_complete_run_directory(tmp_path):
    run = tmp_path / "run"
    result = train(SPEC, epochs=2, out=run, **FAST)
    assert result.epochs == 2 and result.stopped is None and result.checkpoint == run / CHECKPOINT
    assert not result.model.training
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "curves.png", "metrics.csv", "spec.dense"]
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "spec.dense").read_text() == SPEC
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,steps,lr,train_loss,train_acc,test_loss,test_acc,images_per_s,seconds"
    assert [line.split(",")[:3] for line in lines[1:]] == [["1", "4", "0.1"], ["2", "4", "0.01"]]

    ckpt = torch.load(run / CHECKPOINT, weights_only=True)  # tensors and primitives only
    assert ckpt["epoch"] == 2 and ckpt["network"] == "t" and ckpt["spec"]["text"] == SPEC
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "rng", "metrics", "config", "data"}
    assert isinstance(ckpt["rng"][0]["torch"], torch.Tensor)
    assert ckpt["config"]["milestones"] == [0.5, 0.75] and ckpt["config"]["nesterov"] is True
    _same_state(ckpt["model"], result.model.state_dict())
    # The compiler's loader reads densedsl checkpoints too (`compile --weights`).
    model = densedsl.load_weights(densedsl.compile(SPEC), str(run / CHECKPOINT))
    _same_state(model.state_dict(), result.model.state_dict())


def test_library_run_without_out_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    result = train(SPEC, epochs=1, log=lines.append, **FAST)
    assert result.run_dir is None and result.checkpoint is None and list(tmp_path.iterdir()) == []
    text = "\n".join(lines)
    for expected in ("batch size     16", "learning rate  0.1  (paper)", "Nesterov momentum 0.9",
                     "weight decay 0.0001  (paper)", "augmentation   none", "epoch 1/1", "done:"):
        assert expected in text


def test_resume_after_a_stop_ends_with_the_uninterrupted_weights(tmp_path):
    kw = dict(epochs=3, augment="crop+flip", seed=7, **FAST)
    whole = train(SPEC, out=tmp_path / "whole", **kw)
    stopped = train(SPEC, out=tmp_path / "cut", callback=lambda row: row["epoch"] == 1, **kw)
    assert stopped.stopped == "callback" and read_checkpoint(tmp_path / "cut")["epoch"] == 1
    resumed = train(SPEC, out=tmp_path / "cut", resume=True, **FAST)  # the rest from the checkpoint
    assert resumed.config == whole.config
    _same_state(resumed.model.state_dict(), whole.model.state_dict())
    a, b = (read_checkpoint(tmp_path / run) for run in ("whole", "cut"))
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    assert [row["train_loss"] for row in a["metrics"]] == [row["train_loss"] for row in b["metrics"]]


def test_resume_refuses_what_would_change_the_run(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SpecError) as e:
        train(SPEC, epochs=1, out=run, resume=True, **FAST)
    assert _codes(e.value) == ["E901"] and not run.exists()  # the failed run leaves nothing behind
    train(SPEC, epochs=1, out=run, **FAST)
    with pytest.raises(SpecError) as e:
        train(SPEC, epochs=1, out=run, **FAST)
    assert _codes(e.value) == ["E910"] and "--resume" in str(e.value)
    with pytest.raises(SpecError) as e:
        train(SPEC, epochs=1, lr=0.05, out=run, resume=True, **FAST)
    assert _codes(e.value) == ["E116"] and "lr 0.05 (checkpoint: 0.1)" in str(e.value)
    with pytest.raises(SpecError) as e:
        train(SPEC.replace("growth=4", "growth=5"), epochs=1, out=run, resume=True, **FAST)
    assert _codes(e.value) == ["E116"] and "different spec" in str(e.value)


def test_spec_and_data_are_checked_before_training():
    with pytest.raises(SpecError) as e:
        train(SPEC, data="digits", epochs=1)
    assert _codes(e.value) == ["E207"]
    text = str(e.value)
    assert "the spec's head has 3 classes but digits has 10" in text and "hint: --set classes=10" in text
    assert "head classes=classes" in text  # the diagnostic shows the spec line
    with pytest.raises(SpecError) as e:
        train(SPEC.replace("1x8x8", "3x32x32"), data="digits", epochs=1, classes=10)
    assert "the spec's input is 3x32x32 but digits images are 1x8x8" in str(e.value)


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SpecError) as e:  # lr 0.1 for epoch 1, then 0.1 * 1e20
        train(SPEC, epochs=2, milestones=(0.5,), gamma=1e20, out=run, **FAST)
    assert _codes(e.value) == ["E305"]
    assert "at epoch 2, step" in str(e.value) and "last good checkpoint" in str(e.value)
    assert read_checkpoint(run)["epoch"] == 1


def test_max_steps_is_a_smoke_test_without_a_checkpoint(tmp_path):
    result = train(SPEC, epochs=3, max_steps=2, out=tmp_path / "run", **FAST)
    assert result.stopped == "max-steps" and [row["steps"] for row in result.metrics] == [2]
    assert result.checkpoint is None and not (tmp_path / "run" / CHECKPOINT).exists()
    assert (tmp_path / "run" / "metrics.csv").exists()


def test_bf16_autocast_runs_on_the_cpu_and_fp16_is_refused():
    assert train(SPEC, epochs=1, max_steps=1, amp="bf16", **FAST).metrics
    with pytest.raises(SpecError) as e:
        train(SPEC, epochs=1, amp="fp16", device="cpu", **FAST)
    assert _codes(e.value) == ["E306"]


def test_folder_data_trains_at_the_spec_size(tmp_path):
    from PIL import Image
    for split in ("train", "val"):
        for c, color in (("a", (250, 10, 10)), ("b", (10, 10, 250))):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (20, 16), color).save(tmp_path / split / c / f"{i}.png")
    spec = SPEC.replace("1x8x8", "3x8x8").replace("classes=3", "classes=2")
    result = train(spec, data=f"folder:{tmp_path}", epochs=1, batch_size=4, workers=1)
    # Folders' standard augmentation (issue 14): random resized crop and flip.
    assert result.metrics[0]["steps"] == 2 and result.config.augment == "resized-crop+flip"


def test_default_run_dir_never_reuses_a_finished_run(tmp_path):
    assert default_run_dir("t", "digits", resume=False, root=tmp_path) == tmp_path / "t-digits"
    (tmp_path / "t-digits").mkdir()
    assert default_run_dir("t", "digits", resume=False, root=tmp_path) == tmp_path / "t-digits"  # empty
    (tmp_path / "t-digits" / CHECKPOINT).write_bytes(b"")
    assert default_run_dir("t", "digits", resume=False, root=tmp_path) == tmp_path / "t-digits-2"
    assert default_run_dir("t", "digits", resume=True, root=tmp_path) == tmp_path / "t-digits"
    (tmp_path / "t-digits-2").mkdir()
    (tmp_path / "t-digits-2" / ".lock").write_text("123\n")  # a run in progress, nothing written yet
    assert default_run_dir("t", "digits", resume=False, root=tmp_path) == tmp_path / "t-digits-3"


# --- the run directory lock (E910) -----------------------------------------------------------

def test_a_locked_run_directory_is_refused_and_the_lock_ends_with_the_run(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):  # another run, in progress (a separate open file: flock conflicts in-process too)
        with pytest.raises(SpecError) as e:
            train(SPEC, epochs=1, out=run, **FAST)
        assert _codes(e.value) == ["E910"] and f"pid {os.getpid()}" in str(e.value)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # the refused run wrote nothing
    assert not run.exists()  # the lock created the directory; released empty, it is removed
    train(SPEC, epochs=1, out=run, **FAST)
    assert not (run / ".lock").exists() and (run / CHECKPOINT).exists()
    with RunLock(run):  # a resume is refused while another run holds the directory, too
        with pytest.raises(SpecError) as e:
            train(SPEC, epochs=2, out=run, resume=True, **FAST)
        assert _codes(e.value) == ["E910"]
    assert read_checkpoint(run)["epoch"] == 1


def test_a_stale_lock_file_from_a_killed_run_does_not_block(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("999999999\n")  # what SIGKILL leaves: the file, with no lock on it
    assert train(SPEC, epochs=1, out=run, **FAST).epochs == 1


def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_untouched(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(precious)
    with pytest.raises(SpecError) as e:
        train(SPEC, epochs=1, out=run, **FAST)
    assert _codes(e.value) == ["E912"] and precious.read_text() == "keep me\n"


def test_a_smoke_test_run_directory_is_not_overwritten(tmp_path):
    run = tmp_path / "run"
    train(SPEC, epochs=1, max_steps=1, out=run, **FAST)  # metrics.csv, no checkpoint
    with pytest.raises(SpecError) as e:
        train(SPEC, epochs=1, out=run, **FAST)
    assert _codes(e.value) == ["E910"] and "metrics.csv" in str(e.value)


# --- settings and data, refused before training ------------------------------------------------

@pytest.mark.parametrize("setting, value, option", [
    ("lr", math.nan, "--lr"), ("lr", -0.1, "--lr"), ("lr", math.inf, "--lr"),
    ("momentum", -1.0, "--momentum"), ("weight_decay", -1.0, "--weight-decay"),
    ("epochs", 0, "--epochs"), ("epochs", 1.5, "--epochs"), ("batch_size", 0, "--batch-size"),
    ("milestones", (math.nan,), "--milestones"), ("gamma", 0.0, "--gamma"), ("seed", 10**20, "--seed"),
    ("threads", 0, "--threads"), ("workers", -1, "--workers"), ("max_steps", 0, "--max-steps"),
    ("augment", "rotate", "--augment"), ("memory", "tiny", "--memory"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, setting, value, option):
    with pytest.raises(SpecError) as e:
        train(SPEC, out=tmp_path / "run", **{**FAST, "epochs": 1, setting: value})
    assert _codes(e.value) == ["E105"] and e.value.diagnostics[0].file == option
    assert not (tmp_path / "run").exists()


def test_momentum_0_means_plain_sgd_rather_than_an_error():
    result = train(SPEC, epochs=1, momentum=0.0, max_steps=1, **FAST)
    assert result.config.nesterov is False


def test_non_finite_weights_after_the_last_step_are_never_checkpointed(tmp_path, monkeypatch):
    # With the settings check bypassed, a NaN learning rate leaves the one step's loss finite
    # and its weights NaN: the run must stop there, not save them.
    monkeypatch.setattr(checkpoint_schema, "setting_problems", lambda values: [])
    run = tmp_path / "run"
    with pytest.raises(SpecError) as e:
        train(SPEC, epochs=1, lr=math.nan, out=run, **{**FAST, "data": "synthetic:16"})
    assert _codes(e.value) == ["E305"] and "the weights" in str(e.value) and "step 1" in str(e.value)
    assert not (run / CHECKPOINT).exists() and not (run / "metrics.csv").exists()


def test_batches_of_one_are_refused_when_batch_norm_would_see_a_1x1_map(tmp_path):
    small = SPEC.replace("1x8x8", "1x2x2")  # the transition halves 2x2 to 1x1
    with pytest.raises(SpecError) as e:
        train(small, data="synthetic:8", epochs=1, batch_size=1, out=tmp_path / "run")
    assert _codes(e.value) == ["E105"] and e.value.diagnostics[0].file == "--batch-size"
    assert "1x1 map" in str(e.value) and not (tmp_path / "run").exists()
    assert train(SPEC, data="synthetic:8", epochs=1, batch_size=1, max_steps=2).metrics  # 8x8: fine


def test_one_training_image_is_refused_not_trained_for_zero_steps(tmp_path):
    with pytest.raises(SpecError) as e:
        train(SPEC, data="synthetic:1", epochs=1, batch_size=16, out=tmp_path / "run")
    assert _codes(e.value) == ["E208"]
    assert not (tmp_path / "run").exists()


# --- CLI ------------------------------------------------------------------------------------

def test_cli_train_then_eval(tmp_path, capsys):
    spec, run = _spec_file(tmp_path), tmp_path / "run"
    assert cli.main(["train", str(spec), "--data", "synthetic:48", "--epochs", "1", "--batch-size", "16",
                     "--out", str(run), "--no-progress", "--set", "classes=4"]) == 0
    out = capsys.readouterr().out
    assert "4 classes" in out and "(paper)" in out and "epoch 1/1" in out
    assert cli.main(["eval", str(run / CHECKPOINT), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    final = read_checkpoint(run)["metrics"][-1]
    assert result["accuracy"] == pytest.approx(final["test_acc"]) and result["total"] == 12
    assert evaluate(run).loss == pytest.approx(final["test_loss"], rel=1e-5)
    assert cli.main(["eval", str(run)]) == 0
    assert "t (epoch 1) on synthetic:48 test: accuracy" in capsys.readouterr().out


def test_cli_reports_bad_inputs(tmp_path, capsys):
    spec = _spec_file(tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert cli.main(["eval", str(junk)]) == 1
    assert "error[E908]" in capsys.readouterr().err
    assert cli.main(["train", str(spec), "--data", "cifar10:" + str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "error[E207]" in err and "3x32x32" in err


# --- heat map (the paper's Figure 5) --------------------------------------------------------

def test_connection_strength_reads_each_source_range(tmp_path):
    from densedsl.views.heatmap import connection_strength, write_heatmap
    spec = densedsl.parse(SPEC)
    model = densedsl.compile(spec)
    k0, k = 8, 4
    with torch.no_grad():
        for b, block_k0 in ((1, k0), (2, (k0 + 2 * k) // 2)):
            for layer in (1, 2):
                w = model.get_submodule(f"features.denseblock{b}.denselayer{layer}.conv1").weight
                bounds = [0, block_k0] + [block_k0 + k * s for s in range(1, layer)]
                for s in range(layer):
                    w[:, bounds[s]:bounds[s + 1]] = -(100 * b + 10 * layer + s)  # |w| is what counts
        model.get_submodule("features.transition1.conv").weight[:] = 0.5
        model.classifier.weight[:, :10] = 1.0
        model.classifier.weight[:, 10:] = 3.0
    strengths = connection_strength(model, spec.network)
    assert [m.shape for m in strengths] == [(3, 3), (3, 3)]
    first = strengths[0]
    assert first[0, 0] == 110 and first[1, 0] == 120 and first[1, 1] == 121
    assert math.isnan(first[0, 1]) and math.isnan(first[0, 2]) and math.isnan(first[1, 2])
    assert list(first[2]) == [0.5, 0.5, 0.5]
    # Block 2: x0 is the transition's 8 channels, then two layers of 4: the classifier sees 16.
    assert list(strengths[1][2]) == [1.0, 2.0, 3.0]  # x1 straddles the 1.0 / 3.0 boundary
    write_heatmap(strengths, tmp_path / "heat.png", network=spec.network)
    assert (tmp_path / "heat.png").read_bytes()[:4] == b"\x89PNG"


# --- real processes -------------------------------------------------------------------------

def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(tmp_path):
    spec = _spec_file(tmp_path)
    command = [sys.executable, "-m", "densedsl", "train", str(spec), "--data", "synthetic:512",
               "--epochs", "4", "--batch-size", "16", "--augment", "crop+flip", "--seed", "3",
               "--no-progress", "--out"]
    subprocess.run(command + [str(tmp_path / "whole")], env=_env(), check=True, capture_output=True,
                   timeout=300)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(command + [str(cut)], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (cut / CHECKPOINT).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = read_checkpoint(cut)["epoch"]
    assert 1 <= killed_at < 4, "the run finished before it could be killed"
    subprocess.run(command + [str(cut), "--resume"], env=_env(), check=True, capture_output=True,
                   timeout=300)
    whole, resumed = read_checkpoint(tmp_path / "whole"), read_checkpoint(cut)
    assert resumed["epoch"] == whole["epoch"] == 4
    _same_state(resumed["model"], whole["model"])


@pytest.mark.slow
def test_two_trainings_into_one_directory_one_wins_and_nothing_is_lost(tmp_path):
    spec, run = _spec_file(tmp_path), tmp_path / "run"
    command = [sys.executable, "-m", "densedsl", "train", str(spec), "--data", "synthetic:256",
               "--epochs", "2", "--batch-size", "16", "--no-progress", "--threads", "1", "--out", str(run)]
    procs = {seed: subprocess.Popen(command + ["--seed", str(seed)], env=_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for seed in (11, 22)}
    outcomes = {seed: (p.wait(timeout=300), p.stderr.read()) for seed, p in procs.items()}
    for p in procs.values():
        p.stdout.close(), p.stderr.close()
    codes = sorted(rc for rc, _ in outcomes.values())
    assert codes == [0, 1], outcomes
    winner = next(seed for seed, (rc, _) in outcomes.items() if rc == 0)
    loser_err = next(err for rc, err in outcomes.values() if rc == 1)
    assert "error[E910]" in loser_err and "Traceback" not in loser_err
    # The winner's result is whole: its seed, every epoch, its metrics; no lock left behind.
    ckpt = read_checkpoint(run)
    assert ckpt["config"]["seed"] == winner and ckpt["epoch"] == 2
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "curves.png", "metrics.csv", "spec.dense"]


@pytest.mark.slow
def test_torchrun_two_processes_on_the_cpu(tmp_path):
    spec, run = _spec_file(tmp_path), tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "densedsl", "train", str(spec), "--data", "synthetic:64", "--epochs", "1",
         "--batch-size", "8", "--device", "cpu", "--no-progress", "--out", str(run)],
        env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("training t") == 1 and done.stdout.count("epoch 1/1") == 1
    assert "cpu ×2 processes" in done.stdout and "8 per process (16 in all)" in done.stdout
    ckpt = read_checkpoint(run)
    assert ckpt["epoch"] == 1 and len(ckpt["rng"]) == 2  # both ranks' RNG states, saved by rank 0
    assert ckpt["metrics"][0]["steps"] == 4  # 64 images / 2 ranks / batch 8
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "curves.png", "metrics.csv", "spec.dense"]


@pytest.mark.slow
def test_densenet_bc_100_smoke_run_on_synthetic_data():
    result = train(ROOT / "specs" / "densenet_bc_cifar.dense", data="synthetic:8", batch_size=4,
                   max_steps=2, device="cpu")
    assert result.stopped == "max-steps" and math.isfinite(result.metrics[0]["train_loss"])


@pytest.mark.slow
def test_tiny_digits_reaches_97_percent():
    result = train(ROOT / "specs" / "tiny_digits.dense", data="digits", device="cpu", threads=1)
    assert result.test_accuracy >= 0.97 and result.config.epochs == 15


def test_curves_with_characters_the_font_lacks_draw_without_warnings(tmp_path):
    import warnings

    from densedsl.views.plots import write_curves
    rows = [{"epoch": 1, "train_loss": 1.0, "test_loss": 1.1, "train_acc": 0.5, "test_acc": 0.4}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be printed in the middle of the training log
        write_curves(rows, tmp_path / "curves.png", title="t on folder:/data/a\x07b")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("regression", [False, True])
def test_curves_name_the_split_the_epochs_were_scored_on(tmp_path, monkeypatch, regression):
    """With --val-split the held-out curve is the validation split's, and says so in the legend
    and the best-epoch title (issue 23: the curves said "test" for validation numbers)."""
    import matplotlib.figure

    from densedsl.views.plots import write_curves
    texts: list[str] = []
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        for ax in fig.axes:
            texts.append(ax.get_title())
            texts.extend(t.get_text() for t in ax.get_legend().get_texts())
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    score = {"val_rmse": 3.0, "train_rmse": 2.0} if regression else {"val_acc": 0.4, "train_acc": 0.5}
    rows = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, **score}]
    write_curves(rows, tmp_path / "curves.png", held_out="val")
    assert "val" in texts and "test" not in texts
    assert any(t.startswith(("accuracy (best val", "RMSE (best val")) for t in texts), texts
