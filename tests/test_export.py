"""`densedsl compile -o OUT.{pt,py,onnx}`: the files, their round trips, atomicity, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import densedsl  # noqa: E402
from densedsl.core.diagnostics import SpecError  # noqa: E402
from densedsl import cli  # noqa: E402
from densedsl.nn.export import python_source  # noqa: E402
from densedsl.nn.model import DenseNet  # noqa: E402
from densedsl.nn.weights import load_weights  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

SPEC = """
network tiny(growth=4) {
    input 3x16x16
    stem {
        conv 8 kernel=3 padding=1
        norm
        relu
        maxpool kernel=2 stride=2
    }
    dense layers=2 growth=growth bottleneck=2 dropout=0.1
    transition compression=0.5
    dense layers=2 growth=growth order=post bias=true
    transition channels=6 pool=max kernel=3 stride=2 padding=1
    dense layers=1 growth=3
    head classes=5 kernel=2 stride=2
}
"""


@pytest.fixture
def spec_file(tmp_path) -> Path:
    path = tmp_path / "tiny.dense"
    path.write_text(SPEC)
    return path


def _randomise(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)


def _exec_source(text: str) -> dict:
    namespace: dict = {"__name__": "generated"}
    exec(compile(text, "generated.py", "exec"), namespace)
    return namespace


def test_compile_pt_is_a_weights_only_state_dict(spec_file, tmp_path, capsys):
    out = tmp_path / "tiny.pt"
    assert cli.main(["compile", str(spec_file), "-o", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    model = DenseNet(densedsl.load(spec_file).network)
    assert list(state) == list(model.state_dict())
    load_weights(model, out)
    assert "parameters" in capsys.readouterr().err


def test_compile_set_and_network_options(spec_file, tmp_path):
    out = tmp_path / "wide.pt"
    assert cli.main(["compile", str(spec_file), "--network", "tiny", "--set", "growth=6",
                     "-o", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    assert state["features.denseblock1.denselayer1.conv2.weight"].shape[0] == 6


@pytest.mark.parametrize("path", sorted((ROOT / "specs").glob("densenet1[26]1.dense")),
                         ids=lambda p: p.stem)
def test_python_source_rebuilds_the_zoo_layout(path):
    network = densedsl.load(path).network
    namespace = _exec_source(python_source(network))
    with torch.device("meta"):
        generated = namespace["build"]()
    ours = DenseNet(network, device="meta").state_dict()
    assert [(k, v.shape) for k, v in generated.state_dict().items()] == [(k, v.shape) for k, v in ours.items()]


def test_python_source_same_outputs(spec_file):
    network = densedsl.load(spec_file).network
    model = DenseNet(network)
    _randomise(model)
    text = python_source(network)
    assert "densedsl" not in "".join(line for line in text.splitlines() if line.startswith(("import", "from")))
    generated = _exec_source(text)["build"]()
    generated.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16)
    model.eval(), generated.eval()
    with torch.no_grad():
        torch.testing.assert_close(generated(x), model(x), rtol=1e-4, atol=1e-5)


def test_python_source_runs_as_a_script(spec_file, tmp_path):
    script = tmp_path / "tiny.py"
    script.write_text(python_source(densedsl.load(spec_file).network))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "output (1, 5)" in done.stdout


def test_compile_onnx_matches_pytorch(spec_file, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from densedsl.nn.export import write_onnx
    network = densedsl.load(spec_file).network
    model = DenseNet(network)
    _randomise(model)
    out = tmp_path / "tiny.onnx"
    write_onnx(model, out)
    onnx.checker.check_model(onnx.load(str(out)))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 16, 16)  # another batch size than the export's example
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-3, atol=1e-4)


def test_write_onnx_restores_training_mode(spec_file, tmp_path, monkeypatch):
    from densedsl.nn.export import write_onnx

    def boom(*args, **kwargs):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", boom)
    model = DenseNet(densedsl.load(spec_file).network).train()
    with pytest.raises(RuntimeError):
        write_onnx(model, tmp_path / "x.onnx")
    assert model.training
    assert list(tmp_path.iterdir()) == [spec_file]  # nothing half-written


def test_failed_write_leaves_no_partial_file(spec_file, tmp_path, monkeypatch):
    from densedsl.nn.export import write_output
    network = densedsl.load(spec_file).network
    model = DenseNet(network)
    real_save = torch.save

    def save_half(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half)
    out = tmp_path / "w.pt"
    with pytest.raises(SpecError, match="E905") as e:  # a full disk is the user's, said as E905
        write_output(model, network, out)
    assert "No space left on device" in str(e.value)
    assert list(tmp_path.iterdir()) == [spec_file]


def test_unknown_extension_is_e907(spec_file, tmp_path, capsys):
    out = tmp_path / "model.h5"
    assert cli.main(["compile", str(spec_file), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "E907" in err and ".h5" in err
    assert not out.exists()


def test_cli_does_not_import_torch():
    code = ("import sys, densedsl, densedsl.cli; densedsl.cli.build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
