"""What a trained model needs beside its weights to be used on new data: the spec as trained
(its text and the `--set` overrides), the input's shape and layout, how raw input becomes
network input (pixel scale, per-channel mean and std, or the tabular pipeline) and what the
outputs mean (class names, or the regression target and its units).

One record, written three ways: a checkpoint already holds every part of it (`from_checkpoint`);
an exported `.pt` carries it in the state_dict's `_metadata` (torch's own per-module metadata,
which `load_state_dict` reads only under module prefixes, so the file still loads anywhere as a
plain state_dict); an exported `.onnx` carries it as JSON in `metadata_props`. A record read from
a file is untrusted: `problems` checks it before anything uses it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch

from ..core import diagnostics as d
from ..core.diagnostics import Diagnostic, SpecError
from ..core.files import atomic_path
from .checkpoint_schema import TABULAR_KINDS
from .tabular_record import record_problems

FORMAT = "densedsl-model"
VERSION = 1
KEY = "densedsl"  # the state_dict `_metadata` entry and the ONNX metadata_props key
LAYOUTS = {1: "NF", 2: "NCL", 3: "NCHW", 4: "NCDHW"}  # by the rank of one input, batch first


def from_checkpoint(ckpt: dict) -> dict:
    """The record of a checkpoint `checkpoints.read` has validated."""
    data = ckpt["data"]
    shape = [int(s) for s in data["shape"]]
    record: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "network": ckpt["network"], "spec": ckpt["spec"],
        "data": data["name"], "input_shape": shape, "layout": LAYOUTS[len(shape)],
        "classes": int(data["classes"]), "class_names": list(data["class_names"])}
    if data["kind"] in TABULAR_KINDS or "pipeline" in data:
        record.update(task=data.get("task", data["pipeline"]["task"]), pipeline=data["pipeline"])
    else:
        record.update(task="classification", pixel_max=float(data["pixel_max"]),
                      mean=[float(m) for m in data["mean"]], std=[float(s) for s in data["std"]])
    return record


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def problems(record: Any) -> list[str]:
    """What is wrong with a record read from a file; [] when every use of it is safe."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return ["it is not a densedsl model record"]
    if not isinstance(record.get("version"), int) or record["version"] > VERSION:
        return [f"its record version {record.get('version')!r} is not one this densedsl reads ({VERSION})"]
    out = []
    spec = record.get("spec")
    if not (isinstance(spec, dict) and all(isinstance(spec.get(k), str) for k in ("text", "source", "network"))
            and isinstance(spec.get("overrides"), list)
            and all(isinstance(o, list) and len(o) == 2 and isinstance(o[0], str) for o in spec["overrides"])):
        out.append("'spec' must hold the spec's text, source, network and overrides")
    shape = record.get("input_shape")
    if not (isinstance(shape, list) and 1 <= len(shape) <= 4 and all(isinstance(s, int) and s > 0 for s in shape)):
        return out + [f"'input_shape' must be 1 to 4 positive integers, not {shape!r:.60}"]
    if record.get("layout") != LAYOUTS[len(shape)]:
        out.append(f"'layout' must be {LAYOUTS[len(shape)]} for a {len(shape)}-number input")
    classes, names = record.get("classes"), record.get("class_names")
    if not (isinstance(classes, int) and classes >= 1 and isinstance(names, list) and len(names) == classes
            and all(isinstance(n, str) for n in names)):
        out.append("'class_names' must be one string per class")
    if "pipeline" in record:
        out += [f"pipeline: {p}" for p in record_problems(record["pipeline"])]
        if record.get("task") not in ("classification", "regression"):
            out.append("'task' must be 'classification' or 'regression'")
    else:
        channels = shape[0]
        if record.get("task") != "classification":
            out.append("'task' must be 'classification' for image, signal or volume input")
        if not (_finite(record.get("pixel_max")) and record["pixel_max"] > 0):
            out.append("'pixel_max' must be a finite number > 0")
        for key in ("mean", "std"):
            values = record.get(key)
            if not (isinstance(values, list) and len(values) == channels and all(_finite(v) for v in values)
                    and (key == "mean" or all(v > 0 for v in values))):
                out.append(f"'{key}' must be {channels} finite number{'s' if channels > 1 else ''}"
                           + (" > 0" if key == "std" else ""))
    return out


def checked(record: Any, where: str | os.PathLike) -> dict:
    found = problems(record)
    if found:
        raise SpecError([Diagnostic(d.BAD_FILE, f"invalid model record: {found[0]}"
                                    + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""), None,
                                    "export the model again with densedsl compile RUN_DIR -o OUT",
                                    file=str(where))])
    return record


def from_state_dict(state: Any) -> dict | None:
    """The record an exported .pt carries, or None (a plain state_dict)."""
    metadata = getattr(state, "_metadata", None)
    return metadata.get(KEY) if isinstance(metadata, dict) else None


def write_pt(model: torch.nn.Module, record: dict, path: str | os.PathLike) -> None:
    """The state_dict with the record in its `_metadata` (see the module docstring), atomically."""
    state = model.state_dict()
    metadata = getattr(state, "_metadata", None)
    if metadata is None:
        metadata = state._metadata = {}  # type: ignore[attr-defined]
    metadata[KEY] = record
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def onnx_props(record: dict) -> dict[str, str]:
    """metadata_props for an ONNX export: the whole record under `densedsl`, and its parts that
    other tools read on their own, each as JSON."""
    props = {KEY: json.dumps(record, sort_keys=True)}
    for key in ("input_shape", "layout", "class_names", "task", "mean", "std", "pixel_max"):
        if key in record:
            props[key] = json.dumps(record[key])
    return props


def from_onnx(props: dict[str, str]) -> dict | None:
    """The record in an ONNX model's metadata_props (as onnxruntime's custom_metadata_map), or None."""
    if KEY not in props:
        return None
    try:
        return json.loads(props[KEY])
    except ValueError:
        return {"format": "unreadable JSON"}
