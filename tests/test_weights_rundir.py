"""`densedsl.load_weights(model, RUN_DIR)`: a run directory's best.pt when it has one, else its
checkpoint.pt; any other directory is E902."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from test_checkpoints import SPEC

import densedsl
from densedsl.core.diagnostics import SpecError
from densedsl.nn import weights
from densedsl.training import checkpoints

SMALL = dict(data="synthetic:48", batch_size=16, threads=1, device="cpu", progress=False, epochs=1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from densedsl.training.train import train
    out = tmp_path_factory.mktemp("run") / "run"
    train(SPEC, out=out, **SMALL)
    assert (out / checkpoints.CHECKPOINT).is_file() and not (out / checkpoints.BEST).exists()
    return out


def _model():
    return densedsl.compile(SPEC, device="cpu")


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _same(model: torch.nn.Module, state: dict) -> bool:
    own = model.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k], state[k]) for k in own)


def test_a_run_directory_loads_its_checkpoint(run_dir):
    model = densedsl.load_weights(_model(), run_dir)
    assert _same(model, _state(run_dir / checkpoints.CHECKPOINT))
    assert not _same(_model(), _state(run_dir / checkpoints.CHECKPOINT))  # the load did something


def test_best_pt_wins_over_checkpoint_pt(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    best = torch.load(run / checkpoints.CHECKPOINT, map_location="cpu", weights_only=True)
    best["model"] = {k: (v + 1 if v.is_floating_point() else v) for k, v in best["model"].items()}
    torch.save(best, run / checkpoints.BEST)
    model = densedsl.load_weights(_model(), run)
    assert _same(model, best["model"]) and not _same(model, _state(run / checkpoints.CHECKPOINT))


def test_a_directory_without_weights_is_e902(tmp_path):
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(SpecError) as e:
        densedsl.load_weights(_model(), tmp_path)
    [x] = e.value.diagnostics
    assert x.code.code == "E902" and x.file == str(tmp_path)
    assert "neither best.pt nor checkpoint.pt" in x.message and "densedsl train" in x.hint
    assert isinstance(e.value, weights.WeightsError)  # what `except WeightsError` caught before


def test_nn_names_the_files_training_writes():
    """nn may not import training, so it names the two files itself: they must be the same."""
    assert weights.RUN_DIR_FILES == (checkpoints.BEST, checkpoints.CHECKPOINT)
    run = Path("RUN")
    assert checkpoints.model_file(run).name == checkpoints.CHECKPOINT  # neither exists: the fallback
