"""Every relatives spec (issue 22) trains: one epoch of `densedsl train` on synthetic data at
64x64 (`--set size=64`, each spec's own parameter) and `densedsl eval` of the run it wrote.
The exactness tests (test_relatives.py) count the networks; this one runs their forward and
backward passes, optimiser step and checkpoint round trip through the CLI a user would type."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("torch")

from conftest import SPECS  # noqa: E402

import densedsl  # noqa: E402
from densedsl import cli  # noqa: E402
from densedsl.training.train import CHECKPOINT, read_checkpoint  # noqa: E402

# (spec, slow): measured one epoch here (2 shared cores), hardnet85 10.6 s, vovnet57 6.5 s (36M
# parameters each), the others 1.7-5.5 s; the two largest run only with the slow tests
RELATIVES = [
    ("sparsenet", False),
    ("hardnet39ds", False),
    ("hardnet68ds", False),
    ("hardnet68", False),
    ("hardnet85", True),
    ("vovnet39", False),
    ("vovnet57", True),
]
SIZE, CLASSES, IMAGES = 64, 10, 16


def test_the_list_names_every_relatives_spec():
    """A new relative (a spec whose blocks are not DenseNet's) joins this smoke test."""
    relatives = set()
    for path in SPECS.glob("*.dense"):
        if not path.name.startswith(("sparsenet", "hardnet", "vovnet")):
            continue
        relatives.add(path.stem)
    assert relatives == {name for name, _ in RELATIVES}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if slow else name
                                  for name, slow in RELATIVES])
def test_each_relative_trains_an_epoch_at_64px_and_evaluates(name, tmp_path, capsys):
    spec, run = SPECS / f"{name}.dense", tmp_path / "run"
    settings = [f"size={SIZE}", f"classes={CLASSES}"]
    assert cli.main(["train", str(spec), "--data", f"synthetic:{IMAGES}", "--epochs", "1", "--batch-size", "4",
                     "--lr", "0.01", "--set", *settings, "--out", str(run), "--no-progress",
                     "--threads", "1"]) == 0
    assert "epoch 1/1" in capsys.readouterr().out
    assert (run / CHECKPOINT).is_file()
    assert cli.main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["total"] >= 1 and 0 <= result["accuracy"] <= 1 and math.isfinite(result["loss"])
    # the run trained the family member at 64 px: its weights are the analysed ones, and the
    # trained network's figures hold no warning at that size (no map drops rows, none vanishes)
    a = densedsl.analyze(spec, params={"size": SIZE, "classes": CLASSES})
    checkpoint = read_checkpoint(run)
    trained = sum(v.numel() for k, v in checkpoint["model"].items() if not k.endswith("num_batches_tracked"))
    assert trained == a.params + a.buffers
    assert [m["epoch"] for m in checkpoint["metrics"]] == [1] and math.isfinite(checkpoint["metrics"][0]["train_loss"])
    assert a.network.input == (3, SIZE, SIZE) and a.diagnostics == ()
