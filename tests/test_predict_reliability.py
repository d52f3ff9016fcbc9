"""Issue 23, after training: `densedsl predict` from a run directory and from its exports, the
run directory as a self-contained model (`compile RUN_DIR`, `render --heatmap` of it), the
preprocessing in the .pt and ONNX exports, and every bad input as one error, exit 1."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from networks import mlp_text, two_block_text  # noqa: E402

import densedsl
from densedsl import cli
from densedsl.training import model_record
from densedsl.training.predict import load_predictor
from densedsl.training.train import train

SPEC = two_block_text("t", "3x8x8", growth_parameter=True)
TABLE_SPEC = mlp_text("m", "features", "features=9, classes=1")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread


def _main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run trained with a --set value the spec file does not hold (growth=6)."""
    root = tmp_path_factory.mktemp("run")
    (root / "t.dense").write_text(SPEC)
    out = root / "run"
    assert cli.main(["train", str(root / "t.dense"), "--data", "synthetic:64", "--epochs", "1",
                     "--batch-size", "16", "--out", str(out), "--set", "growth=6", "--no-progress"]) == 0
    return out


@pytest.fixture
def inputs(tmp_path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, (np.random.RandomState(0).rand(5, 3, 8, 8) * 255).astype(np.uint8))
    return path


def test_predict_from_the_run_directory_matches_the_model_on_normalised_input(run, inputs, capsys):
    code, out, _ = _main(capsys, "predict", run, "--data", inputs, "--top-k", "2")
    assert code == 0
    rows = _rows(out)
    assert rows[0] == ["input", "class_1", "probability_1", "class_2", "probability_2"] and len(rows) == 6
    # By hand: the checkpoint's model on (x / 255 - mean) / std with the training run's statistics
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    model = densedsl.compile(SPEC, growth=6)
    model.load_state_dict(ckpt["model"])
    model.eval()
    x = torch.from_numpy(np.load(inputs)).float() / 255
    mean, std = (torch.tensor(ckpt["data"][k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        p = torch.softmax(model((x - mean) / std).double(), 1)
    top = p.topk(2, dim=1)
    for row, values, indices in zip(rows[1:], top.values.tolist(), top.indices.tolist()):
        assert [int(row[1]), int(row[3])] == indices
        assert float(row[2]) == pytest.approx(values[0], abs=1e-6)


def test_train_predict_export_predict_gives_the_same_predictions(run, inputs, tmp_path, capsys):
    base = _main(capsys, "predict", run, "--data", inputs)[1]
    assert cli.main(["compile", str(run), "-o", str(tmp_path / "m.pt")]) == 0  # was E902/E908 (--set lost)
    from_pt = _main(capsys, "predict", tmp_path / "m.pt", "--data", inputs)[1]
    assert from_pt == base
    # The .pt is still a plain state_dict: it loads into the spec compiled with the run's --set value
    model = densedsl.compile(SPEC, growth=6)
    model.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    # and into the standalone source of the spec as trained
    assert cli.main(["compile", str(run), "-o", str(tmp_path / "m.py")]) == 0
    namespace: dict = {}
    exec(compile((tmp_path / "m.py").read_text(), "m.py", "exec"), namespace)
    namespace["build"]().load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))


def test_the_onnx_export_carries_preprocessing_and_takes_other_sizes(run, inputs, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert cli.main(["compile", str(run), "-o", str(out)]) == 0
    session = ort.InferenceSession(str(out))
    props = session.get_modelmeta().custom_metadata_map
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert json.loads(props["mean"]) == pytest.approx(ckpt["data"]["mean"])
    assert json.loads(props["class_names"]) == ["0", "1", "2"] and props["layout"] == '"NCHW"'
    # A global-pool head: spatial sizes are dynamic (they were fixed at 8x8)
    assert session.get_inputs()[0].shape[2:] != [8, 8]
    big = session.run(None, {"input": np.zeros((1, 3, 13, 11), np.float32)})[0]
    assert big.shape == (1, 3)
    base = _rows(_main(capsys, "predict", run, "--data", inputs)[1])
    from_onnx = _rows(_main(capsys, "predict", out, "--data", inputs)[1])
    assert [r[1] for r in from_onnx] == [r[1] for r in base]
    assert [float(r[2]) for r in from_onnx[1:]] == pytest.approx([float(r[2]) for r in base[1:]], abs=1e-5)


def test_predict_reads_images_resized_to_the_spec(run, tmp_path, capsys):
    from PIL import Image
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (20, 16), (60 * i, 10, 200)).save(tmp_path / "imgs" / "sub" / f"{i}.png")
    out = tmp_path / "p.csv"
    code, _, err = _main(capsys, "predict", run, "--data", tmp_path / "imgs", "-o", out)
    assert code == 0 and "3 predictions" in err
    rows = _rows(out.read_text())
    assert [Path(r[0]).name for r in rows[1:]] == ["0.png", "1.png", "2.png"]
    single = _rows(_main(capsys, "predict", run, "--data", tmp_path / "imgs" / "sub" / "1.png")[1])
    assert single[1][1] == rows[2][1] and float(single[1][2]) == pytest.approx(float(rows[2][2]), abs=1e-6)


def test_load_predictor_returns_the_model_with_its_preprocessing(run, inputs):
    predictor = load_predictor(run)
    assert predictor.input_shape == (3, 8, 8) and predictor.class_names == ("0", "1", "2")
    p = predictor(torch.from_numpy(np.load(inputs)))
    assert p.shape == (5, 3) and torch.allclose(p.sum(1), torch.ones(5, dtype=torch.float64))


def test_render_heatmap_takes_a_run_directory(run, tmp_path):
    pytest.importorskip("matplotlib")
    assert cli.main(["render", str(run), "--heatmap", "--weights", str(run), "-o", str(tmp_path / "h.png")]) == 0
    (tmp_path / "t.dense").write_text(SPEC)
    assert cli.main(["render", str(tmp_path / "t.dense"), "--set", "growth=6", "--heatmap", "--weights", str(run),
                     "-o", str(tmp_path / "h2.png")]) == 0
    assert (tmp_path / "h.png").stat().st_size > 0 and (tmp_path / "h2.png").stat().st_size > 0


# --- tables --------------------------------------------------------------------------------------

def test_tabular_predict_on_rows_without_the_target_gives_values_in_its_units(tmp_path, capsys):
    rng = np.random.RandomState(1)
    lines = ["size,rooms,colour,price"] + [
        f"{s:.1f},{r},{c},{1000 * s + 5000 * r:.0f}"
        for s, r, c in zip(rng.uniform(30, 200, 80), rng.randint(1, 6, 80), rng.choice(["red", "blue"], 80))]
    (tmp_path / "houses.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "new.csv").write_text("size,rooms,colour\n100,3,red\n50,1,blue\n")
    spec = TABLE_SPEC.replace("features=9", "features=5")
    result = train(spec, data=f"csv:{tmp_path / 'houses.csv'}", target="price", epochs=2, batch_size=16,
                   out=tmp_path / "run")
    code, out, _ = _main(capsys, "predict", tmp_path / "run", "--data", tmp_path / "new.csv")
    assert code == 0
    rows = _rows(out)
    assert rows[0] == ["input", "price"] and len(rows) == 3
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    pipeline = ckpt["data"]["pipeline"]
    from densedsl.training.tabular_record import encode_csv
    with torch.no_grad():
        z = result.model(encode_csv(pipeline, tmp_path / "new.csv")).double().reshape(-1)
    expected = z * pipeline["target_std"] + pipeline["target_mean"]
    assert [float(r[1]) for r in rows[1:]] == pytest.approx(expected.tolist(), rel=1e-6)
    assert cli.main(["compile", str(tmp_path / "run"), "-o", str(tmp_path / "m.pt")]) == 0
    assert (tmp_path / "m.pipeline.json").is_file()
    assert _main(capsys, "predict", tmp_path / "m.pt", "--data", tmp_path / "new.csv")[1] == out
    if importlib.util.find_spec("onnxscript") and importlib.util.find_spec("onnxruntime"):
        assert cli.main(["compile", str(tmp_path / "run"), "-o", str(tmp_path / "m.onnx")]) == 0
        from_onnx = _rows(_main(capsys, "predict", tmp_path / "m.onnx", "--data", tmp_path / "new.csv")[1])
        assert [float(r[1]) for r in from_onnx[1:]] == pytest.approx([float(r[1]) for r in rows[1:]], rel=1e-5)
    code, _, err = _main(capsys, "predict", tmp_path / "run", "--data", tmp_path / "new.csv", "--top-k", "2")
    assert code == 1 and "error[E116]" in err


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("case, code", [
    ("plain state_dict", "E908"), ("wrong shape", "E207"), ("table to an image model", "E207"),
    ("top-k too large", "E105"), ("not csv output", "E907"), ("no such model", "E901"),
    ("edited record", "E908"), ("object array", "E908"), ("unknown suffix", "E117")])
def test_bad_input_is_one_error_and_no_output(run, inputs, tmp_path, capsys, case, code):
    model, data, extra = str(run), str(inputs), []
    if case == "plain state_dict":
        model = str(tmp_path / "plain.pt")
        torch.save(densedsl.compile(SPEC, growth=6).state_dict(), model)
    elif case == "wrong shape":
        np.save(tmp_path / "w.npy", np.zeros((2, 3, 9, 8), np.uint8))
        data = str(tmp_path / "w.npy")
    elif case == "table to an image model":
        (tmp_path / "t.csv").write_text("a,b\n1,2\n")
        data = str(tmp_path / "t.csv")
    elif case == "top-k too large":
        extra = ["--top-k", "4"]
    elif case == "not csv output":
        extra = ["-o", str(tmp_path / "p.json")]
    elif case == "no such model":
        model = str(tmp_path / "missing.pt")
    elif case == "edited record":
        model = str(tmp_path / "m.pt")
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        record = model_record.from_checkpoint(state)
        net = densedsl.compile(SPEC, growth=6)
        net.load_state_dict(state["model"])
        model_record.write_pt(net, {**record, "std": [0.0, 1.0, 1.0]}, model)
    elif case == "object array":
        np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        data = str(tmp_path / "o.npy")
    elif case == "unknown suffix":
        (tmp_path / "x.txt").write_text("1")
        data = str(tmp_path / "x.txt")
    out = tmp_path / "p.csv"
    argv = ["predict", model, "--data", data] + (extra if "-o" in extra else extra + ["-o", str(out)])
    status, stdout, err = _main(capsys, *argv)
    assert status == 1 and f"error[{code}]" in err and "Traceback" not in err, err
    assert not out.exists() and not (tmp_path / "p.json").exists()


def test_compile_of_a_run_directory_refuses_set_values(run, tmp_path, capsys):
    code, _, err = _main(capsys, "compile", run, "--set", "growth=5", "-o", tmp_path / "x.pt")
    assert code == 1 and "error[E116]" in err and not (tmp_path / "x.pt").exists()


def test_the_python_entry_points_load_a_run_and_predict_what_the_cli_writes(run, inputs, capsys):
    """`densedsl.load_run` and `densedsl.predict`: the run's model with its preprocessing, and one
    dict per input with exactly what `densedsl predict` writes."""
    code, out, _ = _main(capsys, "predict", run, "--data", inputs)
    assert code == 0
    header, *rows = _rows(out)
    predictor = densedsl.load_run(run)
    for answers in (densedsl.predict(run, str(inputs)), densedsl.predict(predictor, [str(inputs)])):
        assert [list(a) for a in answers] == [header] * len(rows)
        assert [[str(a[header[0]]), str(a[header[1]])] for a in answers] == [[r[0], r[1]] for r in rows]
        assert [a[header[2]] for a in answers] == pytest.approx([float(r[2]) for r in rows], abs=1e-6)
