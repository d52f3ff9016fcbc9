"""Weights from elsewhere: a trained model exported (`compile --weights`) and a run started from
published or earlier weights (`train --init`).

Both read the file the same way: a densedsl checkpoint (or the run directory holding one) is
validated in full like `eval` validates it (E908, E912, E913); any other file is read the way
`weights.load_weights` reads it (a bare state_dict, or a torchvision, timm or MONAI DenseNet
checkpoint, whose key conventions it recognises).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from . import diagnostics as d
from .checkpoint_schema import FORMAT
from .checkpoints import CHECKPOINT, check
from .diagnostics import Diagnostic, SpecError

_MAX_LISTED = 12  # tensors named one by one in the --init report; the rest are counted


def read_weights(path: str | os.PathLike) -> Any:
    """What torch.load(weights_only=True) returns for a weights file, a densedsl checkpoint
    being validated against the checkpoint schema."""
    from .weights import read_weights_file
    from .files import require_regular
    p = Path(path)
    require_regular(p, "weights file")
    if p.is_dir() and (p / CHECKPOINT).is_file():  # a run directory, as `eval` accepts
        p = p / CHECKPOINT
    raw = read_weights_file(p)
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        check(raw, p)
    return raw


def _naming(error: SpecError, path: str | os.PathLike) -> SpecError:
    """`error` with every diagnostic that names no file naming `path`."""
    error.diagnostics = tuple(x if x.file else replace(x, file=str(path)) for x in error.diagnostics)
    return error


def load_exactly(model: nn.Module, path: str | os.PathLike) -> str:
    """Load every tensor of the weights file into `model` (any missing, unexpected or wrongly
    shaped tensor is E908); returns the key convention recognised."""
    from .weights import load_weights
    raw = read_weights(path)
    try:
        load_weights(model, raw)
    except SpecError as e:
        raise _naming(e, path) from None
    return model.weights_convention


@dataclass(frozen=True, slots=True)
class Initialised:
    """What `initialise` took from a weights file and what it left at initialisation."""

    path: str
    convention: str
    taken: tuple[str, ...]
    reshaped: tuple[tuple[str, str, str], ...]   # (key, model shape, file shape): left as initialised
    missing: tuple[str, ...]                     # in the model, not in the file: left as initialised
    unexpected: tuple[str, ...]                  # in the file, not in the model: ignored

    def lines(self) -> list[str]:
        """The report: every tensor not taken is named; the taken ones are all the others."""
        kept = len(self.reshaped) + len(self.missing)
        out = [f"initial weights from {self.path} ({self.convention} layout): {len(self.taken)} tensors "
               f"taken" + (f", {kept} left at their initialisation" if kept else ", every tensor of the model")]
        out += _listed("  different shape, left at initialisation",
                       [f"{k} (model {a}, weights {b})" for k, a, b in self.reshaped])
        out += _listed("  not in the weights, left at initialisation", list(self.missing))
        out += _listed("  in the weights, not in the model, ignored", list(self.unexpected))
        return out


def _listed(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    shown = items[:_MAX_LISTED]
    more = [f"    … and {len(items) - _MAX_LISTED} more"] if len(items) > _MAX_LISTED else []
    return [f"{title} ({len(items)}):"] + [f"    {item}" for item in shown] + more


def initialise(model: nn.Module, path: str | os.PathLike, *, partial: bool = False) -> Initialised:
    """Copy into `model` every tensor of the weights file whose name and shape match.

    Tensors whose shape differs (the classifier when the number of classes changes) stay at
    their initialisation. Tensors missing from the file, or in the file but not in the model,
    are E908 unless `partial`: they mean the file was written for another architecture."""
    from .weights import _shape, normalised_weights
    import torch
    raw = read_weights(path)
    own = model.state_dict()
    try:
        state, convention = normalised_weights(raw, own)
    except SpecError as e:
        raise _naming(e, path) from None
    taken, reshaped = [], []
    for key, value in state.items():
        if key not in own:
            continue
        if isinstance(value, torch.Tensor) and value.shape == own[key].shape:
            taken.append(key)
        else:
            reshaped.append((key, _shape(own[key]), _shape(value)))
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    result = Initialised(str(path), convention, tuple(taken), tuple(reshaped), tuple(missing), tuple(unexpected))
    if (missing or unexpected) and not partial:
        lines = result.lines()
        raise SpecError([Diagnostic(
            d.BAD_FILE, "the initial weights do not fit the model apart from shapes: "
            + "\n".join(lines[1:]).strip(), None,
            "start from weights of the same architecture (spec and --set values), or pass "
            "--init-partial to take what fits and leave the rest at its initialisation",
            file=str(path))])
    with torch.no_grad():
        for key in taken:
            own[key].copy_(state[key])
    return result
