"""A baseline beside every result, on the same split: the majority class's accuracy for a
classifier; for a regression, R² of the model and a ridge regression (scikit-learn, on the same
encoded features and the same training rows) with its RMSE and R². Printed at the end of a run
and kept in RUN_DIR/result.json."""

from __future__ import annotations

import math
from typing import Any

import torch

from .loaded import Data


def _labels(dataset: Any) -> torch.Tensor:
    return dataset.targets if hasattr(dataset, "targets") else dataset.labels


def r_squared(rmse: float, targets: torch.Tensor) -> float | None:
    """1 - MSE / variance of the split's targets (both in the target's units); None for a constant target."""
    variance = float(targets.double().var(unbiased=False))
    return 1.0 - rmse ** 2 / variance if variance > 0 and math.isfinite(rmse) else None


def _units(data: Data, standard: torch.Tensor) -> torch.Tensor:
    return standard.double() * data.pipeline.target_std + data.pipeline.target_mean


def baseline(data: Data, split: str = "test") -> dict[str, Any]:
    """The baseline's scores on `split` ("test" or "val"), fitted on the training split."""
    held_out: Any = data.test if split == "test" else data.val
    train_set: Any = data.train  # a TabularSet for a regression (only tables train one)
    if data.task != "regression":
        train = _labels(train_set).long()
        majority = int(torch.bincount(train, minlength=data.classes).argmax())
        held = _labels(held_out).long()
        return {"baseline": "majority class", "class": data.class_names[majority],
                f"{split}_acc": float((held == majority).double().mean())}
    from sklearn.linear_model import Ridge
    model = Ridge(alpha=1.0).fit(train_set.features.double().numpy(), train_set.targets.double().numpy())
    predicted = _units(data, torch.from_numpy(model.predict(held_out.features.double().numpy())))
    truth = _units(data, held_out.targets)
    rmse = float((predicted - truth).pow(2).mean().sqrt())
    return {"baseline": "ridge regression (alpha 1, the same encoded features)", f"{split}_rmse": rmse,
            f"{split}_r2": r_squared(rmse, truth)}


def model_r2(data: Data, rmse: float, split: str = "test") -> float | None:
    held_out: Any = data.test if split == "test" else data.val
    return r_squared(rmse, _units(data, held_out.targets))


def _shown(r2: float | None) -> str:
    return "undefined (a constant target)" if r2 is None else f"{r2:.4f}"


def describe(base: dict, split: str = "test") -> str:
    """The report's line: what the baseline scores."""
    if f"{split}_r2" in base:
        from .tabular import format_rmse
        return f"{base['baseline']}: {split} RMSE {format_rmse(base[f'{split}_rmse'])}, R² {_shown(base[f'{split}_r2'])}"
    return f"{base['baseline']} ('{base['class']}'): {split} accuracy {100 * base[f'{split}_acc']:.2f}%"


def lines(scores: dict, base: dict, split: str = "test") -> list[str]:
    """What the run prints: the model's score and the baseline's, on one split."""
    if f"{split}_r2" in base:
        from .tabular import format_rmse
        return [f"{split} R² {_shown(scores[f'{split}_r2'])}; baseline, {base['baseline']}: RMSE "
                f"{format_rmse(base[f'{split}_rmse'])}, R² {_shown(base[f'{split}_r2'])}"]
    return [f"baseline, {base['baseline']} ('{base['class']}'): {split} accuracy {100 * base[f'{split}_acc']:.2f}%"]
