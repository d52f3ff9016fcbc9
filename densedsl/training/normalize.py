"""Which per-channel mean and std a run normalises its images with (`train --normalize`).

    data       the training images' own statistics (the default without --init)
    imagenet   ImageNet's, what torchvision, timm and MONAI's published weights were trained with
               (grey images: the mean of its three channels' values)
    none       mean 0, std 1: the pixels scaled to [0, 1] only
    MEAN,STD   the same two numbers for every channel
    auto       the default: with --init, the statistics the initial weights were trained with
               (a densedsl checkpoint's or export's own; ImageNet's for any other weights file),
               else the data's

Fine-tuning published weights on the new data's own statistics feeds every layer inputs shifted
from those it learned on; `auto` keeps them.
"""

from __future__ import annotations

import math
import os
from typing import Any

from ..core import diagnostics as d
from ..core.diagnostics import Diagnostic, SpecError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NAMED = ("auto", "data", "imagenet", "none")


def _refuse(message: str, hint: str, code: d.Code = d.OUT_OF_RANGE) -> SpecError:
    return SpecError([Diagnostic(code, message, None, hint, file="--normalize")])


def pair(text: str) -> tuple[float, float] | None:
    """MEAN,STD as two numbers, or None for a named setting; E105 for anything else."""
    if text in NAMED:
        return None
    parts = text.split(",")
    try:
        mean, std = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        mean = std = math.nan
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise _refuse(f"--normalize must be {', '.join(NAMED)} or MEAN,STD (finite, STD > 0), not {text!r:.60}",
                      "e.g. --normalize imagenet, or --normalize 0.5,0.25")
    return mean, std


def init_statistics(path: str | os.PathLike) -> tuple[tuple[float, ...], tuple[float, ...], str] | None:
    """(mean, std, whose) the initial weights were trained with, when they say so: a densedsl
    checkpoint of images (or its run directory), or a densedsl export carrying its record."""
    from . import model_record
    from .checkpoint_schema import FORMAT
    from .transfer import read_weights
    raw: Any = read_weights(path)
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        data = raw["data"]
        if "mean" in data:
            return tuple(data["mean"]), tuple(data["std"]), f"the initial weights' ({data['name']})"
        return None
    record = model_record.from_state_dict(raw)
    if record is not None and not model_record.problems(record) and "mean" in record:
        return tuple(record["mean"]), tuple(record["std"]), f"the initial weights' ({record['data']})"
    return None


def choose(setting: str, data: Any, init: str | os.PathLike | None
           ) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, why) for `data` (a loaded image data set) under `setting`."""
    channels = data.shape[0]
    given = pair(setting)
    if given is not None:
        return (given[0],) * channels, (given[1],) * channels, f"--normalize {setting}"
    if setting == "auto" and init is not None:
        found = init_statistics(init)
        if found is not None:
            if len(found[0]) != channels:
                raise _refuse(f"the initial weights were trained on {len(found[0])}-channel images; the data "
                              f"has {channels}", "pass --normalize data (or imagenet, none, MEAN,STD)",
                              d.DATA_MISMATCH)
            return found
        setting = "imagenet"
    if setting == "imagenet":
        if channels == 3:
            return IMAGENET_MEAN, IMAGENET_STD, "ImageNet's" + (", as the initial weights'" if init else "")
        if channels == 1:
            return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,), "ImageNet's, averaged for grey images"
        raise _refuse(f"ImageNet's statistics are for 3 (or 1) channels; the data has {channels}",
                      "pass --normalize data, none or MEAN,STD")
    if setting == "none":
        return (0.0,) * channels, (1.0,) * channels, "none: pixels scaled to [0, 1]"
    return tuple(data.mean), tuple(data.std), "of the training images"

