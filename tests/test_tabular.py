"""Tabular data (`--data csv:FILE --target COLUMN`, `--data diabetes`) and regression training:
the d2l house-price preprocessing, the pipeline in the checkpoint, eval, ONNX export, resume, and
every hostile file as a clear error."""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from densedsl import cli
from densedsl.core.diagnostics import SpecError
from densedsl.training import checkpoint_schema, datasets, loaded, tabular, tabular_record
from densedsl.training.train import CHECKPOINT, evaluate, read_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]

# 9 encoded features for HOUSES: size, rooms + one-hot colour (blue, green, red, missing) + city (A, B, missing)
SPEC = """network m(features=9, classes=1) {
    input features
    defaults growth=8 dropout=0.1 norm=none
    stem {
        linear 16
        relu
    }
    dense layers=2
    head classes=classes
}
"""
FAST = dict(batch_size=16, epochs=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread


def _houses(n: int = 60, seed: int = 0) -> str:
    """Numeric and categorical columns with missing values (empty cells, and "NA" as pandas reads it)."""
    r = random.Random(seed)
    lines = ["size,rooms,colour,city,price"]
    for _ in range(n):
        size, rooms = r.uniform(30, 200), r.randint(1, 6)
        colour, city = r.choice(["red", "blue", "green", ""]), r.choice(["A", "B", "NA"])
        price = 1000 * size + 5000 * rooms + (20000 if colour == "red" else 0) + r.gauss(0, 5000)
        lines.append(f"{'' if r.random() < 0.1 else f'{size:.1f}'},{rooms},{colour},{city},{price:.0f}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def houses(tmp_path) -> Path:
    path = tmp_path / "houses.csv"
    path.write_text(_houses())
    return path


@pytest.fixture
def spec(tmp_path) -> Path:
    path = tmp_path / "m.dense"
    path.write_text(SPEC)
    return path


def _error(capsys, *argv) -> str:
    assert cli.main([str(a) for a in argv]) == 1
    return capsys.readouterr().err


def _codes(e: SpecError) -> list[str]:
    return [x.code.code for x in e.diagnostics]


# --- the pipeline ------------------------------------------------------------------------------

def test_statistics_and_categories_come_from_the_training_split_only(tmp_path):
    train_csv, test_csv = tmp_path / "train.csv", tmp_path / "test.csv"
    train_csv.write_text("x,c,y\n1,a,1\n2,b,2\n3,a,3\n")
    test_csv.write_text("x,c,y\n1000,z,4\n2000,a,5\n")  # leaking these would move the mean to 601
    desc = datasets.describe(f"csv:{train_csv},{test_csv}")
    data = tabular.load(replace(desc, target="y"), task="regression")
    x, c = data.pipeline.columns
    assert (x.mean, x.std) == (2.0, 1.0)          # of 1, 2, 3 (sample std, as pandas and d2l)
    assert c.categories == ("a", "b")             # 'z' appears only in the test file
    assert (data.pipeline.target_mean, data.pipeline.target_std) == (2.0, 1.0)
    # test rows: x standardised with the training statistics; 'z' (unseen) is all zeros
    assert data.test.features.tolist() == [[998.0, 0, 0, 0], [1998.0, 1, 0, 0]]
    assert data.test.targets.tolist() == [2.0, 3.0]  # (4 - 2) / 1, (5 - 2) / 1


def test_missing_numbers_are_zero_after_standardising_and_categories_have_a_missing_column():
    table = tabular._parse("x,c,y\n1,a,10\n,b,20\n3,NA,30\n5,,40\n", None)
    pipeline = tabular.fit(table, [table], "y", "regression")
    x, c = pipeline.columns
    assert (x.mean, x.std) == (3.0, 2.0)          # of 1, 3, 5: the missing cell is not a value
    assert c.categories == ("a", "b") and pipeline.width == 4
    assert pipeline.features(table).tolist() == [
        [-1.0, 1, 0, 0],
        [0.0, 0, 1, 0],     # missing number → 0 (the mean) after standardising
        [0.0, 0, 0, 1],     # "NA" is missing, as pandas reads it
        [1.0, 0, 0, 1],     # an empty cell too
    ]
    assert pipeline.feature_names() == ["x", "c=a", "c=b", "c=<missing>"]
    assert pipeline.composition() == "1 numeric + one-hot c 3 (each column's training values + 1 for missing)"


def test_the_seeded_split_is_fixed_and_covers_every_row_once():
    train_rows, test_rows = tabular.split_indices(442)
    assert (len(train_rows), len(test_rows)) == (354, 88)
    assert sorted(train_rows + test_rows) == list(range(442))
    assert tabular.split_indices(442) == (train_rows, test_rows)


# --- end to end --------------------------------------------------------------------------------

@pytest.mark.slow  # trains twice, exports ONNX: ~10 s
def test_a_csv_trains_evaluates_and_exports_end_to_end(spec, houses, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    assert cli.main(["train", str(spec), "--data", f"csv:{houses}", "--target", "price", "--epochs", "3",
                     "--batch-size", "16", "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "48 training and 12 test rows of 9 features, a regression" in out
    assert "9 = 2 numeric + one-hot colour 4 + city 3" in out
    assert "AdamW" in out and "done: test RMSE" in out
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,steps,lr,train_loss,train_rmse,test_loss,test_rmse,test_log_rmse,rows_per_s,seconds"
    assert len(lines) == 4 and (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    ckpt = read_checkpoint(run)
    assert ckpt["data"]["pipeline"]["target"] == "price" and ckpt["config"]["target"] == "price"

    # eval applies the checkpoint's pipeline and reports the run's own test RMSE
    assert cli.main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    final = ckpt["metrics"][-1]
    assert result["rmse"] == pytest.approx(final["test_rmse"], rel=1e-6) and result["total"] == 12
    assert result["log_rmse"] == pytest.approx(final["test_log_rmse"], rel=1e-6)
    assert cli.main(["eval", str(run)]) == 0
    assert "m (epoch 3) on csv:" in (text := capsys.readouterr().out) and "RMSE" in text

    # compile --weights writes the model and the pipeline that encodes its input
    onnx_file = tmp_path / "m.onnx"
    assert cli.main(["compile", str(spec), "--weights", str(run), "-o", str(onnx_file)]) == 0
    exported = json.loads((tmp_path / "m.pipeline.json").read_text())
    assert exported["features"][:3] == ["size", "rooms", "colour=blue"] and len(exported["features"]) == 9
    features = tabular_record.encode_csv(exported, houses)
    from densedsl.training.train import model_from_checkpoint
    model, _ = model_from_checkpoint(run)
    with torch.no_grad():
        expected = model(features).numpy()
    got = ort.InferenceSession(str(onnx_file)).run(None, {"input": features.numpy()})[0]
    assert got.shape == (60, 1) and abs(got - expected).max() < 1e-4
    # ... and in the target's units, as the JSON says
    p = exported["pipeline"]
    test_rows = tabular.split_indices(60)[1]
    prices = [float(line.split(",")[-1]) for line in houses.read_text().splitlines()[1:]]
    predicted = expected[test_rows, 0] * p["target_std"] + p["target_mean"]
    rmse = math.sqrt(sum((a - prices[i]) ** 2 for a, i in zip(predicted, test_rows)) / len(test_rows))
    assert rmse == pytest.approx(final["test_rmse"], rel=1e-4)


def test_resume_of_a_tabular_run_is_bit_identical(spec, houses, tmp_path):
    kw = dict(data=f"csv:{houses}", target="price", batch_size=16, epochs=3, seed=3)
    whole = train(SPEC, out=tmp_path / "whole", **kw)
    stopped = train(SPEC, out=tmp_path / "cut", callback=lambda row: row["epoch"] == 1, **kw)
    assert stopped.stopped == "callback"
    resumed = train(SPEC, data=f"csv:{houses}", out=tmp_path / "cut", resume=True)  # target from the checkpoint
    assert resumed.config == whole.config and resumed.config.target == "price"
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole.metrics == tuple(dict(r, seconds=w["seconds"], rows_per_s=w["rows_per_s"])
                                  for r, w in zip(resumed.metrics, whole.metrics))
    with pytest.raises(SpecError) as e:  # another target would train other weights
        train(SPEC, data=f"csv:{houses}", target="rooms", out=tmp_path / "cut", resume=True)
    assert _codes(e.value) == ["E116"] and "target rooms (checkpoint: price)" in str(e.value)


def test_diabetes_trains_with_the_issue_command(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", str(ROOT / "specs" / "d2l_flux_mlp.dense"), "--set", "features=10", "classes=1",
                     "--data", "diabetes", "--epochs", "1", "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "354 training and 88 test rows of 10 features, a regression" in out
    assert "AdamW" in out and "(default for tabular data" in out
    row = read_checkpoint(run)["metrics"][0]
    assert math.isfinite(row["test_rmse"]) and row["test_log_rmse"] > 0
    assert (run / "metrics.csv").is_file()


def test_a_csv_classifier_takes_its_classes_from_the_target(tmp_path):
    path = tmp_path / "iris.csv"
    r = random.Random(1)
    path.write_text("a,b,kind\n" + "".join(f"{r.random() + k},{r.random()},{name}\n"
                                           for _ in range(20) for k, name in enumerate(["x", "y", "z"])))
    result = train(SPEC.replace("features=9, classes=1", "features=2, classes=3"), data=f"csv:{path}",
                   target="kind", **FAST)
    assert 0 <= result.test_accuracy <= 1 and "test_rmse" not in result.metrics[-1]
    with pytest.raises(SpecError) as e:
        train(SPEC.replace("features=9, classes=1", "features=2, classes=4"), data=f"csv:{path}",
              target="kind", **FAST)
    assert _codes(e.value) == ["E207"] and "the target 'kind' has 3 values" in str(e.value)


# --- checks against the spec ------------------------------------------------------------------

def test_the_encoded_width_is_checked_before_training_and_explained(spec, houses, tmp_path, capsys):
    err = _error(capsys, "train", spec, "--set", "features=10", "--data", f"csv:{houses}", "--target", "price",
                 "--out", tmp_path / "r")
    assert "error[E207]: the spec's input is 10 features but csv:" in err
    assert "encodes to 9: 2 numeric + one-hot colour 4 + city 3" in err
    assert "hint: --set features=9" in err and "input features" in err  # the caret's line
    assert not (tmp_path / "r").exists()


def test_diabetes_needs_a_regression_of_ten_features(spec, tmp_path, capsys):
    err = _error(capsys, "train", spec, "--set", "classes=3", "--data", "diabetes", "--out", tmp_path / "r")
    assert "diabetes is a regression data set" in err and "--set classes=1" in err
    assert "encodes to 10: 10 numeric columns" in err and "--set features=10" in err
    err = _error(capsys, "train", ROOT / "specs" / "tiny_digits.dense", "--data", "diabetes", "--out", tmp_path / "r")
    assert "error[E207]" in err and "feature vectors" in err


def test_target_options_are_checked(spec, houses, tmp_path, capsys):
    err = _error(capsys, "train", spec, "--data", f"csv:{houses}", "--target", "Prise", "--out", tmp_path / "r")
    assert "error[E207]: no column 'Prise'" in err and "'size', 'rooms', 'colour', 'city', 'price'" in err
    assert "did you mean 'price'?" in err
    err = _error(capsys, "train", spec, "--data", f"csv:{houses}", "--out", tmp_path / "r")
    assert "error[E112]" in err and "--target COLUMN" in err and "'price'" in err
    err = _error(capsys, "train", spec, "--data", f"csv:{houses}", "--target", "colour", "--out", tmp_path / "r")
    assert "error[E207]" in err and "line 2: the target 'colour' is 'red', not a number" in err
    err = _error(capsys, "train", spec, "--data", "diabetes", "--target", "bmi", "--out", tmp_path / "r")
    assert "error[E116]" in err
    err = _error(capsys, "train", spec, "--set", "features=10", "--data", "diabetes", "--augment", "flip",
                 "--label-smoothing", "0.1", "--out", tmp_path / "r")
    assert err.count("error[E116]") == 2 and "--augment flip transforms images" in err
    assert "--label-smoothing smooths class labels" in err and not (tmp_path / "r").exists()


# --- hostile files -----------------------------------------------------------------------------

@pytest.mark.parametrize("content, code, words", [
    (b"", "E208", "the file is empty"),
    (b"\n\n", "E208", "the file is empty"),
    (b"a,b,y\n", "E208", "a header but no rows"),
    (b"a,b,y\n1,2,3\n", "E208", "the file has 1 row"),
    (b"a,b,y\n1,2,3\n4,5\n6,7,8\n", "E908", "line 3 has 2 fields but the header has 3"),
    (b"a,b,y\n1,2,3\n4,5,6,7\n", "E908", "line 3 has 4 fields"),
    (b"a,b,y\n1,2,3\n4,\xff,6\n", "E908", "line 3 is not UTF-8 text (byte 0xff)"),
    (b"a,b,y\n1,2,3\n4,\x00,6\n", "E908", "line 3 holds a NUL byte"),
    (b"a,b,y\n1,\"2,3\n", "E908", "not valid CSV"),
    (b"a,,y\n1,2,3\n4,5,6\n", "E908", "column 2 of the header has no name"),
    (b"a,a,y\n1,2,3\n4,5,6\n", "E908", "names column 'a' twice"),
    (b"a,b,y\n1,2,3\n4,inf,6\n7,8,9\n", "E908", "line 3: column 'b' holds 'inf', which is not a finite number"),
    (b"a,b,y\n1,2,3\n4,5,-inf\n7,8,9\n", "E908", "line 3: the target 'y' is '-inf'"),
    (b"a,b,y\n1,2,3\n4,5,\n7,8,9\n", "E908", "line 3: the target 'y' is missing"),
    (b"a,b,y\n1,2,1e308\n4,5,-1e308\n7,8,9\n", "E908", "too large to standardise"),
])
def test_a_hostile_csv_gets_a_clear_error(tmp_path, capsys, spec, content, code, words):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    err = _error(capsys, "train", spec, "--data", f"csv:{path}", "--target", "y", "--out", tmp_path / "r")
    assert f"error[{code}]" in err and words in err, err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_a_fifo_a_missing_file_and_an_oversized_file_are_refused(tmp_path, capsys, spec, houses, monkeypatch):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    assert "error[E912]" in _error(capsys, "train", spec, "--data", f"csv:{fifo}", "--target", "y")
    assert "error[E901]" in _error(capsys, "train", spec, "--data", f"csv:{tmp_path / 'no.csv'}", "--target", "y",
                                   "--out", tmp_path / "r")
    monkeypatch.setattr(loaded, "MAX_FILE_BYTES", 100)
    err = _error(capsys, "train", spec, "--data", f"csv:{houses}", "--target", "price", "--out", tmp_path / "r")
    assert "error[E908]" in err and "more than densedsl reads from one data file" in err


def test_a_csv_with_too_many_cells_is_refused_while_parsing(monkeypatch):
    monkeypatch.setattr(tabular, "MAX_CELLS", 10)
    with pytest.raises(SpecError) as e:
        tabular._parse("a,b\n" + "1,2\n" * 6, None)
    assert _codes(e.value) == ["E908"] and "more than 10 cells" in str(e.value)


def test_the_encoded_size_is_checked_before_it_is_allocated(monkeypatch):
    table = tabular._parse("id,y\n" + "".join(f"row{i},{i}\n" for i in range(30)), None)
    pipeline = tabular.fit(table, [table], "y", "regression")  # 30 ids: one-hot width 31
    monkeypatch.setattr(loaded, "MAX_FILE_BYTES", 8 * 30 * 31 - 1)
    with pytest.raises(SpecError) as e:
        pipeline.features(table)
    assert _codes(e.value) == ["E307"] and "30 rows of 31 encoded features" in str(e.value)
    assert "one-hot id 31" in e.value.diagnostics[0].hint


def test_csv_data_names_one_or_two_files(tmp_path):
    with pytest.raises(SpecError) as e:
        datasets.describe("csv:a.csv,b.csv,c.csv")
    assert _codes(e.value) == ["E117"]
    comma = tmp_path / "a,b.csv"  # a file whose own name holds a comma is taken whole
    comma.write_text("x,y\n1,2\n")
    assert datasets.describe(f"csv:{comma}").test_path is None
    assert datasets.describe("csv:tr.csv,te.csv").name == "csv:tr.csv,te.csv"


# --- the checkpoint --------------------------------------------------------------------------

@pytest.fixture
def tabular_run(spec, houses, tmp_path) -> Path:
    run = tmp_path / "run"
    train(SPEC, data=f"csv:{houses}", target="price", out=run, batch_size=16, epochs=1)
    return run


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["data"]["pipeline"]["columns"][0].update(std=0.0), "columns[0].std"),
    (lambda c: c["data"]["pipeline"]["columns"][2]["categories"].append("extra"), "data.shape"),
    (lambda c: c["data"]["pipeline"].update(target_std=float("nan")), "target_std"),
    (lambda c: c["data"]["pipeline"]["columns"][2].update(kind="text"), "columns[2].kind"),
    (lambda c: c["data"].update(task="classification"), "pipeline.task"),
    (lambda c: c["metrics"][0].pop("test_rmse"), "metrics[0]"),
])
def test_an_edited_pipeline_is_refused_on_load(tabular_run, tmp_path, edit, words):
    ckpt = torch.load(tabular_run / CHECKPOINT, weights_only=True)
    assert checkpoint_schema.problem_in(ckpt) is None
    edit(ckpt)
    problem = checkpoint_schema.problem_in(ckpt)
    assert problem is not None and words in problem, problem


def test_eval_on_another_csv_applies_the_trained_pipeline(tabular_run, tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("price,colour,size,rooms,city,extra\n" + "".join(
        f"{100000 + i * 1000},red,{50 + i},3,B,x\n" for i in range(10)))  # columns in another order
    result = evaluate(tabular_run, f"csv:{other}")
    # the training run's statistics and categories, not other.csv's own
    from densedsl.training.train import model_from_checkpoint
    pipeline = tabular.Pipeline.from_record(read_checkpoint(tabular_run)["data"]["pipeline"])
    table = tabular.read_csv(other)
    test = tabular._subset(table, tabular.split_indices(10)[1])
    model, _ = model_from_checkpoint(tabular_run)
    with torch.no_grad():
        predicted = model(pipeline.features(test)).double().reshape(-1) * pipeline.target_std + pipeline.target_mean
    actual = torch.tensor([float(row[0]) for row in test.rows], dtype=torch.float64)
    assert result.total == 2 and result.rmse == pytest.approx(float((predicted - actual).square().mean().sqrt()))
    missing = tmp_path / "missing.csv"
    missing.write_text("price,colour,size\n1,red,2\n3,blue,4\n")
    with pytest.raises(SpecError) as e:
        evaluate(tabular_run, f"csv:{missing}")
    assert _codes(e.value) == ["E207"] and "no column 'rooms' the model was trained with" in str(e.value)
    with pytest.raises(SpecError) as e:
        evaluate(tabular_run, "digits")
    assert _codes(e.value) == ["E207"]
