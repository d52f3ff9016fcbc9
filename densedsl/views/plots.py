"""Training curves: loss and accuracy per epoch, train and the held-out split (test, or val with
--val-split), as one image (matplotlib Agg)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

from ..core.files import atomic_path


def write_curves(metrics: Sequence[dict], path: str | os.PathLike, *, title: str | None = None,
                 held_out: str = "test") -> None:
    """Write `metrics` rows (epoch, train_loss, {held_out}_loss, train_acc, {held_out}_acc) to an
    image file, atomically, so a viewer never sees half a PNG while training rewrites it every
    epoch. `held_out` names the split the epochs are scored on, in the legend and the titles."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in metrics]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    h = held_out
    if metrics and f"{h}_rmse" in metrics[0]:  # a regression (checkpoint_schema.REGRESSION_FIELDS)
        _regression_panels(fig, loss_ax, acc_ax, metrics, epochs, title, path, h)
        return
    marker = "o" if len(epochs) <= 30 else None
    for split, style in (("train", "-"), (h, "--")):
        loss_ax.plot(epochs, [row[f"{split}_loss"] for row in metrics], style, marker=marker,
                     markersize=3, label=split)
        acc_ax.plot(epochs, [100 * row[f"{split}_acc"] for row in metrics], style, marker=marker,
                    markersize=3, label=split)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    if metrics and all(row["train_loss"] > 0 and row[f"{h}_loss"] > 0 for row in metrics):
        loss_ax.set_yscale("log")
    best = max(metrics, key=lambda row: row[f"{h}_acc"]) if metrics else None
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)",
               title="accuracy" + (f" (best {h} {100 * best[f'{h}_acc']:.2f}% at epoch {best['epoch']})"
                                   if best else ""))
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.3)
        ax.legend()
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    if title:
        fig.suptitle(title, parse_math=False)  # it holds the user's data path: "$" is no TeX
    target = Path(path)
    with atomic_path(target) as tmp, warnings.catch_warnings():
        # A title character the font lacks (a control character in a data path) is drawn as a
        # box; matplotlib's warning about it would only interrupt the training log.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(tmp, format=(target.suffix.lstrip(".") or "png"), dpi=100)


def _regression_panels(fig, loss_ax, rmse_ax, metrics: Sequence[dict], epochs: list, title: str | None,
                       path: str | os.PathLike, h: str) -> None:
    """A regression's curves: the MSE of the standardised target, and the RMSE in its units."""
    marker = "o" if len(epochs) <= 30 else None
    for split, style in (("train", "-"), (h, "--")):
        loss_ax.plot(epochs, [row[f"{split}_loss"] for row in metrics], style, marker=marker, markersize=3,
                     label=split)
        rmse_ax.plot(epochs, [row[f"{split}_rmse"] for row in metrics], style, marker=marker, markersize=3,
                     label=split)
    loss_ax.set(xlabel="epoch", ylabel="MSE (standardised target)", title="loss")
    if all(row["train_loss"] > 0 and row[f"{h}_loss"] > 0 for row in metrics):
        loss_ax.set_yscale("log")
    best = min(metrics, key=lambda row: row[f"{h}_rmse"])
    rmse_ax.set(xlabel="epoch", ylabel="RMSE (target units)",
                title=f"RMSE (best {h} {best[f'{h}_rmse']:.4g} at epoch {best['epoch']})")
    for ax in (loss_ax, rmse_ax):
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    if title:
        fig.suptitle(title, parse_math=False)
    target = Path(path)
    with atomic_path(target) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(tmp, format=(target.suffix.lstrip(".") or "png"), dpi=100)
