"""Model selection: a validation split carved off the training data (`--val-split F`), the epoch
whose weights are kept (`--keep best|last`), early stopping (`--patience N`), and the test split
scored once, at the end, with the kept weights.

With a validation split, each epoch's row names its held-out numbers `val_loss`, `val_acc`
(`val_rmse` ...) instead of `test_*`, and the test numbers are in RUN_DIR/result.json, beside the
epoch they belong to. `--keep best` keeps RUN_DIR/best.pt, a checkpoint of the best epoch
(highest validation accuracy, ties to the lower loss; lowest validation RMSE for a regression);
checkpoint.pt stays the last epoch's, for --resume. A run directory's model is best.pt when it
holds one (`checkpoints.model_file`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..core import diagnostics as d
from ..core.diagnostics import Diagnostic, SpecError
from ..core.files import atomic_path, atomic_write
from .checkpoints import BEST, CHECKPOINT
from .loaded import Data

RESULT = "result.json"
KEEP = ("last", "best")


def _subset(dataset: Any, index: torch.Tensor) -> Any:
    from .datasets import FolderSet, ImageSet
    from .tabular import TabularSet
    if isinstance(dataset, ImageSet):
        return ImageSet(dataset.images[index], dataset.labels[index])
    if isinstance(dataset, TabularSet):
        return TabularSet(dataset.features[index], dataset.targets[index])
    assert isinstance(dataset, FolderSet)
    return FolderSet([dataset.files[i] for i in index.tolist()], dataset.labels[index].tolist(), dataset.shape)


def split_off(data: Data, fraction: float, seed: int) -> Data:
    """`data` with `fraction` of its training split (at random, from `seed`) as its validation split.
    The normalisation statistics stay those of the whole training split, as loaded."""
    n = len(data.train)
    n_val = round(fraction * n)
    if n_val < 1 or n - n_val < 1:
        raise SpecError([Diagnostic(d.NO_DATA, f"--val-split {fraction:g} of {n} training examples leaves "
                                    f"{'no validation' if n_val < 1 else 'no training'} examples", None,
                                    "choose a fraction that leaves some of each", file="--val-split")])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return replace(data, train=_subset(data.train, order[n_val:].sort().values),
                   val=_subset(data.train, order[:n_val].sort().values))


def validation_row(row: dict) -> dict:
    """An epoch's row with its held-out numbers named for the validation split."""
    return {(f"val_{k[5:]}" if k.startswith("test_") else k): v for k, v in row.items()}


def _score(row: dict) -> tuple[float, ...]:
    """Larger is better."""
    if "val_rmse" in row:
        return (-row["val_rmse"],)
    return (row["val_acc"], -row["val_loss"])


def best_epoch(metrics: list[dict]) -> int | None:
    """The epoch (1-based) with the best validation score; None without validation rows."""
    rows = [r for r in metrics if "val_loss" in r]
    return max(rows, key=_score)["epoch"] if rows else None


def out_of_patience(metrics: list[dict], patience: int | None) -> bool:
    best = best_epoch(metrics)
    return patience is not None and best is not None and metrics[-1]["epoch"] - best >= patience


def keep_best(run_dir: Path | None, kept: dict, model: torch.nn.Module, metrics: list[dict]) -> None:
    """After an epoch's checkpoint: remember the weights when the epoch is the best so far."""
    if best_epoch(metrics) != metrics[-1]["epoch"]:
        return
    kept["epoch"] = metrics[-1]["epoch"]
    kept["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if run_dir is not None and (run_dir / CHECKPOINT).is_file():
        with atomic_path(run_dir / BEST) as tmp:
            shutil.copyfile(run_dir / CHECKPOINT, tmp)


def kept_state(run_dir: Path | None, kept: dict) -> dict | None:
    """The best epoch's weights: remembered in this process, else best.pt (a resumed run)."""
    if "state" in kept:
        return kept["state"]
    if run_dir is not None and (run_dir / BEST).is_file():
        from .checkpoints import read
        return read(run_dir / BEST)["model"]
    return None


def write_result(run_dir: Path | None, result: dict) -> None:
    if run_dir is not None:
        atomic_write(run_dir / RESULT, json.dumps(result, indent=1) + "\n")


def needs_validation(config: Any, data: Data) -> None:
    """--keep best and --patience select on a validation split, never on the test split."""
    asked = [name for name, on in (("--keep best", config.keep == "best"),
                                   ("--patience", config.patience is not None)) if on]
    if asked and data.val is None:
        raise SpecError([Diagnostic(d.MISSING, f"{' and '.join(asked)} choose{'s' if len(asked) == 1 else ''} "
                                    "epochs on a validation split, and the run has none", None,
                                    "add --val-split 0.1 (or a val/ folder beside train/ and test/)",
                                    file=asked[0].split()[0])])
