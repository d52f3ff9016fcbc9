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

from ..core import diagnostics as d
from ..core.diagnostics import Diagnostic, SpecError
from .checkpoint_schema import FORMAT
from .checkpoints import CHECKPOINT, check, model_file

_MAX_LISTED = 12  # tensors named one by one in the --init report; the rest are counted


def read_weights(path: str | os.PathLike) -> Any:
    """What torch.load(weights_only=True) returns for a weights file, a densedsl checkpoint
    being validated against the checkpoint schema."""
    from ..core.files import require_regular
    from ..nn.weights import read_weights_file
    p = Path(path)
    require_regular(p, "weights file")
    if p.is_dir() and (p / CHECKPOINT).is_file():  # a run directory, as `eval` accepts
        p = model_file(p)
    raw = read_weights_file(p)
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        check(raw, p)
    return raw


def _naming(error: SpecError, path: str | os.PathLike) -> SpecError:
    """`error` with every diagnostic that names no file naming `path`."""
    error.diagnostics = tuple(x if x.file else replace(x, file=str(path)) for x in error.diagnostics)
    return error


def load_exactly(model: nn.Module, path: str | os.PathLike) -> str:
    """Load every tensor of the weights file into `model` (any missing, unexpected, wrongly
    shaped or unusable tensor is E908, its hint worded for the command line); returns the key
    convention recognised."""
    from ..nn.weights import load_weights
    raw = read_weights(path)
    try:
        load_weights(model, raw, cli=True)
    except SpecError as e:
        raise _naming(e, path) from None
    return str(model.weights_convention)


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
        from ..nn.weights import shown_key
        out += _listed("  different shape, left at initialisation",
                       [f"{shown_key(k)} (model {a}, weights {b})" for k, a, b in self.reshaped])
        out += _listed("  not in the weights, left at initialisation", [shown_key(k) for k in self.missing])
        out += _listed("  in the weights, not in the model, ignored", [shown_key(k) for k in self.unexpected])
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
    are E908 unless `partial`: they mean the file was written for another architecture. Always
    E908: a value no model can take (`weights.fit`), convolutions of another rank, and a file of
    which no tensor fits (training would start from scratch under a name that says otherwise)."""
    import torch

    from ..nn.weights import UNUSABLE_HINT, fit, normalised_weights, shown_key
    raw = read_weights(path)
    own = model.state_dict()
    try:
        state, convention = normalised_weights(raw, own)
    except SpecError as e:
        raise _naming(e, path) from None
    f = fit(state, own)
    result = Initialised(str(path), convention, f.taken, f.reshaped, f.missing, f.unexpected)
    lines = result.lines()
    if f.unusable:
        _refuse(path, "the initial weights hold values the model cannot take",
                _listed("  unusable values", list(f.unusable)), UNUSABLE_HINT)
    if f.ranks is not None:
        _refuse(path, f"the initial weights do not fit the model: {f.cause()[0]}",
                _listed("  different shapes", [f"{shown_key(k)} (model {a}, weights {b})" for k, a, b in f.reshaped]),
                "the spec's input must have the rank the weights were trained with: CxL for 1-D, "
                "CxHxW for 2-D, CxDxHxW for 3-D convolutions")
    if not f.taken:
        _refuse(path, f"no tensor of the initial weights fits the model ({len(state)} in the file, "
                f"{len(own)} in the model)", lines[1:],
                "pass weights written for this spec's architecture (spec and --set values), or "
                "train without --init")
    if (f.missing or f.unexpected) and not partial:
        _refuse(path, "the initial weights do not fit the model apart from shapes:", lines[1:],
                "start from weights of the same architecture (spec and --set values), or pass "
                "--init-partial to take what fits and leave the rest at its initialisation")
    with torch.no_grad():
        for key in f.taken:
            own[key].copy_(state[key])
    return result


def _refuse(path: str | os.PathLike, headline: str, lines: list[str], hint: str) -> None:
    raise SpecError([Diagnostic(d.BAD_FILE, "\n".join([headline, *lines]), None, hint, file=str(path))])
