"""Issue 23, after training: checkpoints of every kind of input evaluate and resume (synthetic
vectors, 1-D signals), the run directory's spec.dense names its --set values, and a checkpoint's
pipeline that feeds the target to the model is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from networks import mlp_text, two_block_text  # noqa: E402

from densedsl import cli
from densedsl.core.diagnostics import SpecError
from densedsl.training import checkpoints
from densedsl.training.train import CHECKPOINT, evaluate, train

VECTOR = mlp_text("m", "6", "classes=3")
SIGNAL = two_block_text("s", "2x32", growth_parameter=True, classes=2)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread


def _codes(e: SpecError) -> list[str]:
    return [x.code.code for x in e.diagnostics]


@pytest.mark.parametrize("spec", [VECTOR, SIGNAL], ids=["synthetic vectors", "1-D signals"])
def test_a_checkpoint_of_any_input_rank_evaluates_and_resumes(tmp_path, spec):
    run = tmp_path / "run"
    trained = train(spec, data="synthetic:32", epochs=1, batch_size=16, out=run)
    result = evaluate(run)  # was E908 ('data' has no entry 'pixel_max'; data.shape of 3 values)
    assert result.total > 0 and result.accuracy == pytest.approx(trained.metrics[-1]["test_acc"])
    resumed = train(spec, data="synthetic:32", epochs=2, batch_size=16, out=run, resume=True)
    assert [row["epoch"] for row in resumed.metrics] == [1, 2]


def test_spec_dense_names_the_set_values_it_was_trained_with(tmp_path):
    (tmp_path / "s.dense").write_text(SIGNAL)
    run = tmp_path / "run"
    assert cli.main(["train", str(tmp_path / "s.dense"), "--data", "synthetic:32", "--epochs", "1",
                     "--batch-size", "16", "--out", str(run), "--set", "growth=6", "--no-progress"]) == 0
    text = (run / "spec.dense").read_text()
    assert text.startswith("# trained with --set growth=6") and text.endswith(SIGNAL)
    # as the comment says: the file with the --set value takes the run's weights
    assert cli.main(["compile", str(run / "spec.dense"), "--set", "growth=6", "--weights", str(run),
                     "-o", str(tmp_path / "m.pt")]) == 0


def test_a_checkpoint_whose_pipeline_feeds_the_target_is_refused(tmp_path):
    lines = ["a,b,y"] + [f"{i},{i % 3},{2 * i}" for i in range(40)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    spec = VECTOR.replace("input 6", "input 2").replace("classes=3", "classes=1")
    train(spec, data=f"csv:{tmp_path / 't.csv'}", target="y", epochs=1, batch_size=16, out=tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    ckpt["data"]["pipeline"]["columns"][1]["name"] = "y"  # the target, listed as a feature
    with pytest.raises(SpecError) as e:
        checkpoints.check(ckpt, "edited")
    assert _codes(e.value) == ["E908"] and "target" in str(e.value)


# --- model selection (--val-split, --keep, --patience) ---------------------------------------

IMAGES = SIGNAL.replace("input 2x32", "input 3x8x8")


def test_a_validation_split_selects_and_the_test_split_is_scored_once(tmp_path, monkeypatch):
    from densedsl.training import loop
    from densedsl.training import train as train_module
    splits: list[str] = []
    original = loop.evaluate_split

    def spy(*args, **kw):
        splits.append(kw.get("split", "test"))
        return original(*args, **kw)
    monkeypatch.setattr(loop, "evaluate_split", spy)
    monkeypatch.setattr(train_module, "evaluate_split", spy)
    run = tmp_path / "run"
    result = train(IMAGES, data="synthetic:64", epochs=4, batch_size=16, out=run, val_split=0.25, keep="best")
    assert splits == ["val"] * 4 + ["test"]  # every epoch on validation, the test split once
    assert all("val_acc" in row and "test_acc" not in row for row in result.metrics)
    assert (run / "metrics.csv").read_text().splitlines()[0].split(",")[5:7] == ["val_loss", "val_acc"]
    best = max(result.metrics, key=lambda r: (r["val_acc"], -r["val_loss"]))["epoch"]
    import json
    saved = json.loads((run / "result.json").read_text())
    assert saved["epoch"] == best and saved["split"] == "test" and saved["test_acc"] == result.test_accuracy
    kept = torch.load(run / "best.pt", weights_only=True)
    assert kept["epoch"] == best
    for key, value in kept["model"].items():  # the run ends with the best epoch's weights
        assert torch.equal(result.model.state_dict()[key], value), key
    # the run directory's model is best.pt: eval, predict and compile read it
    assert evaluate(run).epoch == best
    from densedsl.training.predict import load_predictor
    assert load_predictor(run).source.endswith("best.pt")


def test_patience_stops_when_validation_stops_improving(tmp_path):
    # lr 0: only the batch-norm statistics move, so the validation score soon stops improving
    from densedsl.training.selection import best_epoch
    result = train(IMAGES, data="synthetic:64", epochs=30, batch_size=16, lr=0.0, momentum=0.0,
                   val_split=0.25, patience=2, out=tmp_path / "run")
    assert result.stopped == "patience" and result.epochs < 30
    assert result.epochs - best_epoch(list(result.metrics)) == 2
    # the checkpoint with validation rows passes the schema: the run resumes from it
    resumed = train(IMAGES, data="synthetic:64", epochs=30, batch_size=16, lr=0.0, momentum=0.0,
                    val_split=0.25, patience=2, out=tmp_path / "run", resume=True)
    assert resumed.metrics[:result.epochs] == result.metrics and resumed.epochs > result.epochs


@pytest.mark.parametrize("flags", [["--keep", "best"], ["--patience", "3"]])
def test_selection_without_a_validation_split_is_refused(tmp_path, capsys, flags):
    (tmp_path / "s.dense").write_text(IMAGES)
    code = cli.main(["train", str(tmp_path / "s.dense"), "--data", "synthetic:32", "--epochs", "1",
                     "--out", str(tmp_path / "run"), "--no-progress", *flags])
    err = capsys.readouterr().err
    assert code == 1 and "error[E112]" in err and "--val-split" in err
    assert not (tmp_path / "run" / CHECKPOINT).exists()


# --- fine-tuning (--normalize, frozen batch norms, --freeze-bn, per-group rates) -------------

@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("init") / "run"
    train(IMAGES, data="synthetic:64", epochs=1, batch_size=16, out=run)
    return run


def _norm_stats(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("features.") and "running_" in k}


def test_frozen_stages_keep_their_batch_norm_statistics(first_run, tmp_path):
    start = torch.load(first_run / CHECKPOINT, weights_only=True)["model"]
    result = train(IMAGES, data="synthetic:64", epochs=1, batch_size=16, init=first_run, freeze=("features",),
                   head_lr=0.01, lr=0.1)
    after = result.model.state_dict()
    for key, value in _norm_stats(start).items():  # were updated by every training batch
        assert torch.equal(after[key], value), key
    # the lr column is the base rate, head_lr the classifier's (lr showed the head's rate)
    assert result.metrics[0]["lr"] == pytest.approx(0.1) and result.metrics[0]["head_lr"] == pytest.approx(0.01)


def test_freeze_bn_keeps_every_batch_norm_statistic(first_run):
    start = torch.load(first_run / CHECKPOINT, weights_only=True)["model"]
    result = train(IMAGES, data="synthetic:64", epochs=1, batch_size=16, init=first_run, freeze_bn=True)
    after = result.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in _norm_stats(start).items())
    moved = [k for k in start if k.endswith(".weight") and not torch.equal(after[k], start[k])]
    assert moved  # the weights themselves still train


def test_normalize_defaults_to_the_initial_weights_statistics(first_run, tmp_path):
    from densedsl.training.normalize import IMAGENET_MEAN, IMAGENET_STD
    saved = torch.load(first_run / CHECKPOINT, weights_only=True)
    # torchvision-layout weights (a bare state_dict): ImageNet's statistics
    (tmp_path / "tv.pth").parent.mkdir(exist_ok=True)
    torch.save(saved["model"], tmp_path / "tv.pth")
    run = tmp_path / "tv"
    train(IMAGES, data="synthetic:32", epochs=1, batch_size=16, init=tmp_path / "tv.pth", out=run)
    data = torch.load(run / CHECKPOINT, weights_only=True)["data"]
    assert data["mean"] == pytest.approx(IMAGENET_MEAN) and data["std"] == pytest.approx(IMAGENET_STD)
    # a densedsl run: the statistics it was trained with, not the new data's
    run = tmp_path / "dd"
    train(IMAGES, data="synthetic:32", epochs=1, batch_size=16, init=first_run, out=run)
    assert torch.load(run / CHECKPOINT, weights_only=True)["data"]["mean"] == pytest.approx(saved["data"]["mean"])
    # explicit settings
    result = train(IMAGES, data="synthetic:32", epochs=1, batch_size=16, normalize="none", out=tmp_path / "none")
    data = torch.load(tmp_path / "none" / CHECKPOINT, weights_only=True)["data"]
    assert data["mean"] == [0.0] * 3 and data["std"] == [1.0] * 3 and result.metrics
    train(IMAGES, data="synthetic:32", epochs=1, batch_size=16, normalize="0.5,0.25", out=tmp_path / "pair")
    assert torch.load(tmp_path / "pair" / CHECKPOINT, weights_only=True)["data"]["std"] == [0.25] * 3


@pytest.mark.parametrize("value", ["1,0", "imagenett", "nan,1"])
def test_a_bad_normalize_is_refused_before_training(tmp_path, capsys, value):
    (tmp_path / "s.dense").write_text(IMAGES)
    code = cli.main(["train", str(tmp_path / "s.dense"), "--data", "synthetic:32", "--epochs", "1",
                     "--out", str(tmp_path / "run"), "--no-progress", "--normalize", value])
    err = capsys.readouterr().err
    assert code == 1 and "error[E105]" in err and "normalize" in err and "Traceback" not in err
    assert not (tmp_path / "run" / CHECKPOINT).exists()


# --- baselines ---------------------------------------------------------------------------------

DIABETES = mlp_text("m", "10", "classes=1")


def test_a_regression_reports_r2_and_a_ridge_baseline_on_the_same_split(tmp_path):
    import json

    from sklearn.linear_model import Ridge

    from densedsl.training import datasets, tabular
    lines: list[str] = []
    run = tmp_path / "run"
    result = train(DIABETES, data="diabetes", epochs=2, out=run, val_split=0.2, log=lines.append)
    saved = json.loads((run / "result.json").read_text())
    # by hand, on the same split: the run's training rows (less the validation rows) and its test rows
    data = tabular.load(datasets.describe("diabetes"), task="regression")
    p = data.pipeline
    truth = data.test.targets.double() * p.target_std + p.target_mean
    assert saved["test_r2"] == pytest.approx(1 - result.test_rmse ** 2 / float(truth.var(unbiased=False)))
    from densedsl.training.loop import derived_seed
    from densedsl.training.selection import split_off
    train_rows = split_off(data, 0.2, derived_seed(0, "val-split")).train
    ridge = Ridge(alpha=1.0).fit(train_rows.features.double().numpy(), train_rows.targets.double().numpy())
    predicted = torch.from_numpy(ridge.predict(data.test.features.double().numpy())) * p.target_std + p.target_mean
    rmse = float((predicted - truth).pow(2).mean().sqrt())
    assert saved["baseline"]["test_rmse"] == pytest.approx(rmse)
    assert saved["baseline"]["test_r2"] == pytest.approx(1 - rmse ** 2 / float(truth.var(unbiased=False)))
    assert any(line.startswith("test R² ") and "ridge regression" in line for line in lines)


def test_a_classifier_reports_the_majority_class_accuracy(tmp_path):
    from densedsl.training import datasets
    lines: list[str] = []
    train(IMAGES, data="synthetic:64", epochs=1, batch_size=16, out=tmp_path / "run", log=lines.append)
    saved = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["data"]  # no result.json without --val-split
    data = datasets.load("synthetic:64", shape=(3, 8, 8), classes=2)
    majority = int(torch.bincount(data.train.labels).argmax())
    expected = float((data.test.labels == majority).double().mean())
    assert saved["baseline"]["test_acc"] == pytest.approx(expected) and saved["baseline"]["class"] == str(majority)
    assert f"baseline, majority class ('{majority}'): test accuracy {100 * expected:.2f}%" in lines


# --- tabular columns: --drop, identifiers --------------------------------------------------------

def _kaggle(tmp_path: Path) -> Path:
    import random
    r = random.Random(3)
    lines = ["Id,size,rooms,price"] + [
        f"{1000 + i},{s:.1f},{k},{1000 * s + 5000 * k + r.gauss(0, 3000):.0f}"
        for i, (s, k) in enumerate((r.uniform(30, 200), r.randint(1, 6)) for _ in range(80))]
    path = tmp_path / "houses.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


HOUSE_SPEC = DIABETES.replace("input 10", "input features").replace("network m(classes=1)",
                                                                     "network m(features=2, classes=1)")


def test_an_identifier_column_is_warned_about_and_drop_leaves_it_out(tmp_path, capsys):
    import json
    houses = _kaggle(tmp_path)
    lines: list[str] = []
    train(HOUSE_SPEC, data=f"csv:{houses}", target="price", epochs=1, features=3, log=lines.append)
    assert any(line.startswith("warning: column 'Id' looks like a row identifier") and "--drop Id" in line
               for line in lines)
    (tmp_path / "m.dense").write_text(HOUSE_SPEC)
    run = tmp_path / "run"
    code = cli.main(["train", str(tmp_path / "m.dense"), "--data", f"csv:{houses}", "--target", "price",
                     "--drop", "Id", "--val-split", "0.2", "--epochs", "2", "--out", str(run), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "warning:" not in out and "test R² " in out and "ridge regression" in out
    pipeline = torch.load(run / CHECKPOINT, weights_only=True)["data"]["pipeline"]
    assert [c["name"] for c in pipeline["columns"]] == ["size", "rooms"]
    saved = json.loads((run / "result.json").read_text())
    assert "test_r2" in saved and "test_r2" in saved["baseline"]
    # new rows with their Id: the identifier is not read
    (tmp_path / "new.csv").write_text("Id,size,rooms\n9999,100,3\n")
    assert cli.main(["predict", str(run), "--data", str(tmp_path / "new.csv")]) == 0


@pytest.mark.parametrize("drop, code", [("Idd", "E207"), ("price", "E116")])
def test_drop_of_a_missing_column_or_the_target_is_refused(tmp_path, capsys, drop, code):
    houses = _kaggle(tmp_path)
    (tmp_path / "m.dense").write_text(HOUSE_SPEC)
    status = cli.main(["train", str(tmp_path / "m.dense"), "--data", f"csv:{houses}", "--target", "price",
                       "--drop", drop, "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1 and f"error[{code}]" in err and "Traceback" not in err
    assert not (tmp_path / "run" / CHECKPOINT).exists()


# --- arrays (--data npz:FILE, npy:INPUTS,LABELS) -----------------------------------------------

VOLUME = SIGNAL.replace("input 2x32", "input 1x8x8x8")


def _arrays(shape: tuple[int, ...], n: int = 40, seed: int = 0):
    import numpy as np
    rng = np.random.RandomState(seed)
    y = rng.randint(0, 2, n)
    x = rng.randn(n, *shape).astype(np.float32) + y.reshape(-1, *[1] * len(shape)) * 2.0
    return x, y


def test_npz_arrays_of_signals_and_volumes_train_evaluate_and_predict(tmp_path, capsys):
    import numpy as np
    for spec, shape, name in ((SIGNAL, (2, 32), "signals"), (VOLUME, (1, 8, 8, 8), "volumes")):
        x, y = _arrays(shape)
        np.savez(tmp_path / f"{name}.npz", x_train=x[:32], y_train=y[:32], x_test=x[32:], y_test=y[32:])
        run = tmp_path / name
        result = train(spec, data=f"npz:{tmp_path / name}.npz", epochs=2, batch_size=8, augment="flip", out=run)
        assert result.metrics[-1]["test_acc"] > 0.5
        assert evaluate(run).total == 8
        np.save(tmp_path / f"{name}-new.npy", x[32:])
        assert cli.main(["predict", str(run), "--data", str(tmp_path / f"{name}-new.npy")]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 9


def test_npy_inputs_with_labels_alongside_split_80_20(tmp_path):
    import numpy as np
    x, y = _arrays((2, 32), n=50)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    result = train(SIGNAL, data=f"npy:{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}", epochs=1, batch_size=8)
    assert result.metrics[0]["steps"] == 5  # 40 training inputs of 50, batch 8


@pytest.mark.parametrize("case, code", [("wrong shape", "E207"), ("label out of range", "E207"),
                                        ("object array", "E908"), ("missing arrays", "E112"), ("crop", "E116")])
def test_bad_arrays_are_refused(tmp_path, capsys, case, code):
    import numpy as np
    x, y = _arrays((2, 32))
    augment = []
    if case == "wrong shape":
        np.savez(tmp_path / "a.npz", x=x[:, :, :16], y=y)
    elif case == "label out of range":
        np.savez(tmp_path / "a.npz", x=x, y=y + 5)
    elif case == "object array":
        np.savez(tmp_path / "a.npz", x=np.array([{"a": 1}] * 40, dtype=object), y=y)
    elif case == "missing arrays":
        np.savez(tmp_path / "a.npz", inputs=x, labels=y)
    else:
        np.savez(tmp_path / "a.npz", x=x, y=y)
        augment = ["--augment", "crop+flip"]
    (tmp_path / "s.dense").write_text(SIGNAL)
    status = cli.main(["train", str(tmp_path / "s.dense"), "--data", f"npz:{tmp_path / 'a.npz'}", "--epochs", "1",
                       "--out", str(tmp_path / "run"), "--no-progress", *augment])
    err = capsys.readouterr().err
    assert status == 1 and f"error[{code}]" in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_flip_flips_each_rank_along_its_own_axes():
    from densedsl.training.datasets import prepare_batch
    # a signal's time axis, an image's horizontal axis only, each of a volume's three axes
    for shape, axes in (((1, 2, 5), (2,)), ((1, 1, 3, 4), (3,)), ((1, 1, 2, 3, 4), (2, 3, 4))):
        x = torch.arange(int(torch.tensor(shape).prod()), dtype=torch.uint8).reshape(shape)
        mean, std = torch.zeros(shape[1]), torch.ones(shape[1])
        seen = {tuple(prepare_batch(x, pixel_max=1.0, mean=mean, std=std, augment="flip",
                                    generator=torch.Generator().manual_seed(s)).flatten().tolist()) for s in range(40)}
        flips = {tuple(x.float().flip(a).flatten().tolist()) for a in axes}
        assert tuple(x.float().flatten().tolist()) in seen and flips <= seen  # each axis flips, alone
        assert len(seen) == 2 ** len(axes)  # and no other axis ever does


def test_a_val_folder_beside_test_is_the_validation_split(tmp_path):
    from PIL import Image
    for split in ("train", "val", "test"):
        for c, color in (("a", (250, 10, 10)), ("b", (10, 10, 250))):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(4 if split == "train" else 2):
                Image.new("RGB", (12, 10), color).save(tmp_path / split / c / f"{i}.png")
    spec = IMAGES
    result = train(spec, data=f"folder:{tmp_path}", epochs=2, batch_size=4, keep="best", out=tmp_path / "run")
    assert all("val_acc" in row for row in result.metrics) and result.test is not None
    assert result.test["test_examples"] == 4  # test/, scored once; val/ scored every epoch
    with pytest.raises(SpecError) as e:
        train(spec, data=f"folder:{tmp_path}", epochs=1, batch_size=4, val_split=0.2)
    assert _codes(e.value) == ["E116"]
