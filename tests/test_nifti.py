"""--data nifti:DIR: NIfTI volumes listed in labels.csv files, read with nibabel (issue 23, item 7)."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from densedsl import cli
from densedsl.core.diagnostics import SpecError
from densedsl.training import loaded, nifti
from densedsl.training.train import CHECKPOINT, evaluate, train

nib = pytest.importorskip("nibabel")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread

from networks import two_block_text  # noqa: E402

VOLUME = two_block_text("v", "1x8x8x8", growth_parameter=True, classes=2)


def _save(path: Path, voxels: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), path)


def _volumes(root: Path, split: str, n: int, *, seed: int, shape=(8, 8, 8), suffix=".nii.gz") -> list[np.ndarray]:
    """n volumes of two classes (bright and dark) in root/split, with their labels.csv."""
    rng = np.random.RandomState(seed)
    (root / split).mkdir(parents=True)
    rows, made = ["file,label"], []
    for i in range(n):
        label = ("bright", "dark")[i % 2]
        voxels = (rng.randn(*shape) + (2.0 if label == "bright" else -2.0)).astype(np.float32)
        _save(root / split / f"v{i}{suffix}", voxels)
        rows.append(f"v{i}{suffix},{label}")
        made.append(voxels)
    (root / split / "labels.csv").write_text("\n".join(rows) + "\n")
    return made


def _data(tmp_path: Path, **kw) -> Path:
    root = tmp_path / "data"
    _volumes(root, "train", 12, seed=0, **kw)
    _volumes(root, "test", 4, seed=1, **kw)
    return root


def _refused(tmp_path: Path, capsys, root: Path, spec: str = VOLUME) -> str:
    (tmp_path / "s.dense").write_text(spec)
    status = cli.main(["train", str(tmp_path / "s.dense"), "--data", f"nifti:{root}", "--epochs", "1",
                       "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run" / CHECKPOINT).exists()
    return err


def test_nifti_volumes_train_evaluate_and_predict(tmp_path, capsys):
    root = _data(tmp_path)
    run = tmp_path / "run"
    result = train(VOLUME, data=f"nifti:{root}", epochs=1, batch_size=4, augment="flip", out=run)
    assert result.metrics[0]["steps"] == 3  # 12 training volumes, batch 4
    assert evaluate(run).total == 4
    new = tmp_path / "new"
    new.mkdir()
    for i, voxels in enumerate(_volumes(tmp_path, "more", 3, seed=2)):
        _save(new / f"n{i}.nii.gz", voxels)
    assert cli.main(["predict", str(run), "--data", str(new)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[0].startswith("input,") and out[1].split(",")[0] == str(new / "n0.nii.gz")
    assert {line.split(",")[1] for line in out[1:]} <= {"bright", "dark"}  # the class names, sorted


def test_a_volume_is_its_voxels_in_the_files_axis_order_channels_first(tmp_path):
    root = tmp_path / "d"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    voxels = np.arange(2 * 3 * 4 * 2, dtype=np.int16).reshape(2, 3, 4, 2)  # channels last, as NIfTI keeps them
    for split in ("train", "test"):
        for name, label in (("a.nii", "x"), ("b.nii", "y")):
            _save(root / split / name, voxels)
        (root / split / "labels.csv").write_text("file,label\na.nii,x\nb.nii,y\n")
    train_set, test_set, names, val = nifti.load(root, (2, 2, 3, 4))
    assert names == ("x", "y") and val is None and train_set.labels.tolist() == [0, 1]
    expected = torch.from_numpy(np.moveaxis(voxels, -1, 0).astype(np.float32))
    assert train_set.images.dtype == torch.float32 and torch.equal(train_set.images[0], expected)
    # a 3-D volume is one channel
    for split in ("train", "test"):
        _save(root / split / "a.nii", voxels[..., 1])
        _save(root / split / "b.nii", voxels[..., 1])
    single = nifti.load(root, (1, 2, 3, 4))[0]
    assert torch.equal(single.images[1], expected[1:])


def test_a_val_folder_beside_test_is_the_validation_split(tmp_path):
    root = _data(tmp_path)
    _volumes(root, "val", 2, seed=3)
    train_set, test_set, names, val = nifti.load(root, (1, 8, 8, 8))
    assert (len(train_set), len(test_set), len(val)) == (12, 4, 2) and names == ("bright", "dark")


@pytest.mark.parametrize("case, code", [
    ("wrong size", "E207"), ("channels", "E207"), ("head classes", "E207"), ("missing file", "E901"),
    ("no labels.csv", "E901"), ("unknown class", "E908"), ("outside the folder", "E908"),
    ("not nifti", "E908"), ("truncated", "E908"), ("bad header", "E112"), ("nan", "E908")])
def test_bad_nifti_data_is_refused(tmp_path, capsys, case, code):
    spec = VOLUME
    if case == "wrong size":
        root = _data(tmp_path, shape=(8, 8, 9))
    elif case == "channels":
        root = _data(tmp_path, shape=(8, 8, 8, 3))
    else:
        root = _data(tmp_path)
    labels = root / "test" / "labels.csv"
    if case == "head classes":
        spec = VOLUME.replace("classes=2,", "classes=3,")
    elif case == "missing file":
        (root / "test" / "v1.nii.gz").unlink()
    elif case == "no labels.csv":
        labels.unlink()
    elif case == "unknown class":
        labels.write_text(labels.read_text() + "v0.nii.gz,grey\n")
    elif case == "outside the folder":
        labels.write_text(labels.read_text() + "../train/v0.nii.gz,dark\n")
    elif case == "not nifti":
        (root / "test" / "v0.nii.gz").write_bytes(gzip.compress(b"not a volume" * 40))
    elif case == "truncated":
        whole = gzip.decompress((root / "test" / "v0.nii.gz").read_bytes())
        (root / "test" / "v0.nii.gz").write_bytes(gzip.compress(whole[:-100]))
    elif case == "bad header":
        labels.write_text(labels.read_text().replace("file,label", "path,class"))
    else:
        voxels = np.zeros((8, 8, 8), np.float32)
        voxels[1, 2, 3] = np.nan
        _save(root / "test" / "v0.nii.gz", voxels)
    err = _refused(tmp_path, capsys, root, spec)
    assert f"error[{code}]" in err, err


def test_a_header_declaring_a_huge_volume_is_refused_before_reading(tmp_path, capsys, monkeypatch):
    root = _data(tmp_path)
    header = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)).header
    header.set_data_shape((1000, 1000, 1000))  # 10^9 voxels, 4 GB as float32, in a tiny file
    raw = gzip.decompress((root / "train" / "v0.nii.gz").read_bytes())
    (root / "train" / "v0.nii.gz").write_bytes(gzip.compress(header.binaryblock + raw[len(header.binaryblock):]))
    read = []
    monkeypatch.setattr(nifti.Volume, "read", lambda self: read.append(self) or torch.zeros(1, 8, 8, 8))
    err = _refused(tmp_path, capsys, root)
    assert "error[E307]" in err and "1000x1000x1000" in err and read == [], err


def test_the_whole_data_set_is_capped_before_any_voxel_is_read(tmp_path, capsys, monkeypatch):
    root = _data(tmp_path)
    monkeypatch.setattr(loaded, "MAX_FILE_BYTES", 10 * 8 * 8 * 8 * 4)  # ten volumes' worth; 16 are there
    read = []
    monkeypatch.setattr(nifti.Volume, "read", lambda self: read.append(self) or torch.zeros(1, 8, 8, 8))
    err = _refused(tmp_path, capsys, root)
    assert "error[E307]" in err and "data set" in err and read == [], err


def test_without_nibabel_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    root = _data(tmp_path)
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import nibabel now raises ModuleNotFoundError
    err = _refused(tmp_path, capsys, root)
    assert "error[E911]" in err and 'densedsl[nifti]' in err, err


def test_predict_refuses_a_volume_of_another_size(tmp_path, capsys):
    root = _data(tmp_path)
    run = tmp_path / "run"
    train(VOLUME, data=f"nifti:{root}", epochs=1, batch_size=4, out=run)
    _save(tmp_path / "odd.nii", np.zeros((8, 8, 4), np.float32))
    assert cli.main(["predict", str(run), "--data", str(tmp_path / "odd.nii")]) == 1
    err = capsys.readouterr().err
    assert "error[E207]" in err and "8x8x4" in err and "Traceback" not in err, err


def test_the_data_description_names_nifti(tmp_path):
    from densedsl.training import datasets
    root = _data(tmp_path)
    desc = datasets.describe(f"nifti:{root}")
    assert (desc.kind, desc.classes, desc.shape, desc.augment) == ("nifti", 2, None, "none")
    with pytest.raises(SpecError) as e:
        datasets.describe(f"nifti:{tmp_path / 'nowhere'}")
    assert e.value.diagnostics[0].code.code == "E901"
