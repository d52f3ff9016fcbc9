"""Training checkpoints as untrusted files: verified, loaded without running code, validated.

A checkpoint is a file someone hands you, so before anything in it is used:

1. it must be a regular file (`files.require_regular`: a FIFO would block forever);
2. its zip records must match their CRC-32s (E913, `weights.verify_archive`). `torch.save`
   writes a CRC for every record, but `torch.load` never checks them: bytes flipped inside a
   tensor load without a word and evaluate at chance accuracy. Records must be stored, not
   compressed (torch never compresses), so what a file declares can never exceed what it holds;
3. it loads with `torch.load(weights_only=True)`: tensors and primitives only, no code runs;
4. every entry has the type and range densedsl writes (`check`, against the one schema in
   `checkpoint_schema`), so a crafted file gets one E908 naming the field instead of a
   KeyError, a ZeroDivisionError or NaNs deep inside training or evaluation.

Writing (`save`: atomically, with a CRC-32 for every record, never non-finite weights) and what a
checkpoint rebuilds (`spec_record`/`spec_from_record`, `model_from_checkpoint`, `restore`) live
here too, so the format is defined here and in `checkpoint_schema`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from ..core import diagnostics as d
from ..core.diagnostics import Diagnostic, SpecError
from ..core.files import atomic_path, require_regular
from ..nn.weights import load_weights, verify_archive
from .checkpoint_schema import FORMAT, FORMAT_VERSION, TABULAR_KINDS, _is_int, problem_in
from .tabular import Pipeline
from .tabular_record import exported

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # train --keep best: the best epoch's checkpoint (a run directory's model when present)


def model_file(run_dir: Path) -> Path:
    """The checkpoint whose weights are a run directory's model: best.pt when kept, else checkpoint.pt."""
    return run_dir / BEST if (run_dir / BEST).is_file() else run_dir / CHECKPOINT


# --- the file --------------------------------------------------------------------------------------

def _error(code: d.Code, path: Path, message: str, hint: str | None = None) -> SpecError:
    return SpecError([Diagnostic(code, message, None, hint, file=str(path))])


def read(path: str | os.PathLike) -> dict:
    """Load and validate a densedsl training checkpoint (a file, or a run directory holding one)."""
    p = Path(path)
    require_regular(p, "checkpoint")
    if p.is_dir() and (p / CHECKPOINT).exists():
        p = model_file(p)
        require_regular(p, "checkpoint")
    if not p.is_file():
        raise _error(d.FILE_NOT_FOUND, p, "no such checkpoint",
                     f"pass RUN_DIR/{CHECKPOINT} (or the run directory)")
    verify_archive(p)
    if not zipfile.is_zipfile(p):  # densedsl writes torch's zip format only
        raise _error(d.BAD_FILE, p, "not a densedsl training checkpoint (not a torch.save zip archive)",
                     f"pass RUN_DIR/{CHECKPOINT} as written by densedsl train")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), "")
        raise _error(d.BAD_FILE, p, "not a weights-only densedsl checkpoint" + (f" ({why})" if why else ""),
                     "densedsl train writes checkpoints that load with weights_only=True") from None
    except (OSError, EOFError, RuntimeError, ValueError, TypeError, KeyError, AttributeError,
            IndexError, OverflowError, MemoryError, RecursionError) as e:
        # torch.load reports a truncated or foreign file as RuntimeError from its zip reader,
        # and a crafted pickle can make its unpickler fail in any of these ways.
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise _error(d.BAD_FILE, p, f"cannot read the checkpoint: {first}",
                     "the file may be truncated or not written by densedsl train") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise _error(d.BAD_FILE, p, "not a densedsl training checkpoint (no 'format' entry)",
                     "use densedsl compile --weights for plain state_dicts")
    version = ckpt.get("version")
    if _is_int(version) and version is not None and version > FORMAT_VERSION:
        raise _error(d.BAD_FILE, p, f"checkpoint format {version} is newer than this densedsl reads "
                     f"({FORMAT_VERSION})", "upgrade densedsl")
    check(ckpt, p)
    return ckpt


def check(ckpt: Any, path: str | os.PathLike | None = None) -> None:
    """Raise E908 naming the first entry of `ckpt` that densedsl would not have written."""
    problem = problem_in(ckpt)
    if problem is not None:
        raise SpecError([Diagnostic(d.BAD_FILE, f"invalid checkpoint: {problem}", None,
                                    "the file was not written by densedsl train, or was edited",
                                    file=str(path) if path is not None else "checkpoint")])


# --- writing, and what a checkpoint rebuilds ---------------------------------------------------

def _portable(value: Any) -> Any:
    """A parameter value as something torch.load(weights_only=True) accepts."""
    if isinstance(value, Fraction):
        return {"fraction": [value.numerator, value.denominator]}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def _unportable(value: Any) -> Any:
    if isinstance(value, dict) and "fraction" in value:
        return Fraction(*value["fraction"])
    return value


def spec_record(spec) -> dict:
    """The entry `spec` of a checkpoint: what rebuilds `spec` (a `Spec`) without its file."""
    return {"text": spec.source.text, "source": spec.source.name, "network": spec.network.name,
            "overrides": [[k, _portable(v)] for k, v in spec.overrides]}


def spec_from_record(record: dict):
    """Rebuild the `Spec` a checkpoint was trained from."""
    from ..language.spec import parse
    overrides = {k: _unportable(v) for k, v in record["overrides"]}
    return parse(record["text"], record["source"], network=record["network"], **overrides)


def invalid(path: str | os.PathLike, message: str, hint: str | None = None) -> SpecError:
    """E908 for a checkpoint that loaded but does not fit what it is used for."""
    return _error(d.BAD_FILE, Path(path), message, hint)


def model_from_checkpoint(checkpoint: str | os.PathLike | dict, *, memory: str = "standard"):
    """(model with the checkpoint's weights, in eval mode, the Spec) from the checkpoint alone
    (a path, or what `read` returned)."""
    if isinstance(checkpoint, dict):
        check(checkpoint)
        return model_and_spec(checkpoint, Path("checkpoint"), memory)
    return model_and_spec(read(checkpoint), Path(checkpoint), memory)


def model_and_spec(ckpt: dict, where: Path, memory: str):
    """(model, Spec) from a checkpoint `read` has validated."""
    from ..nn.build import build_model
    if ckpt["spec"] is None:
        raise invalid(where, "the checkpoint holds no spec text (it was trained from a Network object)",
                      "rebuild the model yourself and use densedsl.load_weights(model, checkpoint)")
    spec = spec_from_record(ckpt["spec"])
    _check_data_fits(ckpt, spec.network, where)
    model = build_model(spec.network, memory=memory)
    load_weights(model, ckpt["model"])
    return model.eval(), spec


def _check_data_fits(ckpt: dict, net, where: Path) -> None:
    """The data record must describe the spec's input and classes: its statistics normalise it."""
    saved = ckpt["data"]
    if tuple(saved["shape"]) != tuple(net.input):
        raise invalid(where, f"invalid checkpoint: 'data.shape' {saved['shape']} is not the spec's "
                      f"input {'x'.join(map(str, net.input))}", "the file was edited")
    if net.head is None or saved["classes"] != net.head.classes:
        raise invalid(where, f"invalid checkpoint: 'data.classes' {saved['classes']} is not the "
                      "spec's number of classes", "the file was edited")


def restore(ckpt: dict, model, optimizer, scheduler, scaler, path: Path) -> None:
    """Load a validated checkpoint's states; one that does not fit this model is E908, not a crash."""
    load_weights(model, ckpt["model"])
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise invalid(path, f"invalid checkpoint: its optimizer state does not fit the model ({e})",
                      "the file was edited, or written for another spec") from None


def save(path: Path, model, optimizer, scheduler, scaler, epoch: int, metrics, config,
         record: dict | None, data, net, rng: list[dict]) -> None:
    """Write a checkpoint atomically, with a CRC-32 for every record; never one with
    non-finite weights. `config` is the run's `train_config.Config`, `data` its `datasets.Data`."""
    bad = non_finite(model.state_dict())
    if bad is not None:  # never reached (the loop checks first); the last line of defence
        raise SpecError([Diagnostic(d.DIVERGED, f"refusing to save non-finite weights ({bad})", None,
                                    file=str(path))])
    state = {
        "format": FORMAT, "version": FORMAT_VERSION, "epoch": epoch,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "rng": rng, "metrics": [dict(row) for row in metrics],
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "spec": record, "network": net.name,
        "data": {"name": data.name, "kind": data.description.kind, "shape": list(data.shape),
                 "classes": data.classes, "class_names": list(data.class_names),
                 **({"task": data.task, "pipeline": data.pipeline.record()} if data.tabular else
                    {"pixel_max": data.pixel_max, "mean": list(data.mean), "std": list(data.std)}),
                 **({"baseline": data.baseline} if data.baseline is not None else {})},
        "torch": str(torch.__version__),  # TorchVersion itself does not load with weights_only
    }
    crc = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(True)  # read checks every record's CRC-32
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    finally:
        torch.serialization.set_crc32_options(crc)


def non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor in `state` holding a NaN or an infinity."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def pipeline_of(weights) -> dict | None:
    """The pipeline record of a densedsl checkpoint trained on tabular data, or None (another
    kind of weights file, or image data)."""
    path = Path(weights)
    if path.is_dir():
        path = path / CHECKPOINT
    try:
        ckpt = read(path)
    except SpecError:  # not a densedsl checkpoint: the caller has loaded it as weights already
        return None
    data = ckpt["data"]
    return exported(Pipeline.from_record(data["pipeline"]), data["name"]) if data["kind"] in TABULAR_KINDS else None
