"""Predictions on new data from a trained model: `densedsl predict` and `load_predictor`.

A model is a run directory (or its checkpoint.pt), or what `densedsl compile RUN_DIR -o OUT`
exported: OUT.pt or OUT.onnx, which carry the spec and the preprocessing
(`model_record`). No data set is read: the statistics the model was trained with travel with it.

Inputs (`--data`, one or more):

    DIR, or image files      images (.png, .jpg ...), read like folder: data and resized to the
                             spec's input size; a directory is searched recursively, sorted
    FILE.csv (or csv:FILE)   rows for a model trained on a table; the target column may be absent
    FILE.npy (or npy:FILE)   an array of inputs (N x the spec's input), or one input, in the
                             training data's raw units (pixel values 0..255 for images)
    .nii/.nii.gz files, or a directory of them (or nifti:DIR)
                             volumes, read like nifti: data (no resampling; needs nibabel)

Every output row names its input (a path, or the row's index from 0) and holds the class and its
probability (or the top K of each), or the regression value in the target's own units.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ..core import diagnostics as d
from ..core.diagnostics import Diagnostic, SpecError
from ..core.files import atomic_write, check_writable, require_regular
from . import loaded, model_record
from .checkpoint_schema import FORMAT as CHECKPOINT_FORMAT
from .tabular import Pipeline, read_csv

BATCH = 64


def _fail(code: d.Code, message: str, file: str | os.PathLike | None, hint: str | None = None) -> SpecError:
    return SpecError([Diagnostic(code, message, None, hint, file=str(file) if file is not None else "--data")])


@dataclass(frozen=True, slots=True, kw_only=True)
class Predictor:
    """A trained model with what turns raw input into its input and its output into answers.

    `predictor(x)` takes raw input (images as stored: uint8 pixels, N x C x ...; for a table,
    its encoded rows) and returns class probabilities (N x classes) or, for a regression,
    values in the target's units (N)."""

    model: Callable[[torch.Tensor], torch.Tensor]  # network input -> raw network output
    record: dict
    source: str
    pipeline: Pipeline | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.record["input_shape"])

    @property
    def task(self) -> str:
        return str(self.record["task"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.record["class_names"])

    @property
    def tabular(self) -> bool:
        return self.pipeline is not None

    def preprocess(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw images, signals or volumes (N x C x ...) → network input, as training normalised
        them: scaled by the data's pixel maximum, then per channel (x - mean) / std."""
        if self.tabular:
            return raw.float()
        r = self.record
        per_channel = (1, -1) + (1,) * (raw.dim() - 2)
        mean = torch.tensor(r["mean"], dtype=torch.float32).view(per_channel)
        std = torch.tensor(r["std"], dtype=torch.float32).view(per_channel)
        return (raw.float() / float(r["pixel_max"]) - mean) / std

    def answers(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw network outputs → probabilities, or regression values in the target's units."""
        if self.task == "regression":
            assert self.pipeline is not None  # only tables train regressions
            return outputs.double().reshape(-1) * self.pipeline.target_std + self.pipeline.target_mean
        return torch.softmax(outputs.double(), dim=1)

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.answers(self.model(self.preprocess(raw)))


# --- loading a model ---------------------------------------------------------------------------

def load_predictor(path: str | os.PathLike, *, device: str = "cpu") -> Predictor:
    """The model at `path` (a run directory, its checkpoint, an exported .pt or .onnx) with its
    preprocessing; SpecError (E901, E908 ...) for anything else."""
    from .checkpoints import CHECKPOINT, model_file
    p = Path(path)
    require_regular(p, "model")
    if p.is_dir():
        if not (p / CHECKPOINT).is_file():
            raise _fail(d.FILE_NOT_FOUND, f"the directory holds no {CHECKPOINT}", p,
                        "pass a run directory written by densedsl train, or an exported .pt/.onnx")
        p = model_file(p)
    if not p.exists():
        raise _fail(d.FILE_NOT_FOUND, "no such model", p, "pass a run directory, a checkpoint, or a .pt/.onnx "
                    "written by densedsl compile RUN_DIR -o OUT")
    if p.suffix.lower() == ".onnx":
        return _onnx_predictor(p)
    from .transfer import read_weights
    raw = read_weights(p)
    if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
        record, state = model_record.from_checkpoint(raw), raw["model"]
    else:
        found = model_record.from_state_dict(raw)
        if found is None:
            raise _fail(d.BAD_FILE, "a plain state_dict: it carries no spec and no preprocessing", p,
                        "export the run with densedsl compile RUN_DIR -o model.pt (or pass the run directory)")
        record, state = model_record.checked(found, p), raw
    return _torch_predictor(record, state, p, device)


def _spec_of(record: dict, where: Path):
    from .checkpoints import spec_from_record
    if record["spec"] is None:
        raise _fail(d.BAD_FILE, "the model holds no spec text (it was trained from a Network object)", where,
                    "rebuild the model yourself and use densedsl.load_weights(model, checkpoint)")
    spec = spec_from_record(record["spec"])
    net = spec.network
    if tuple(net.input) != tuple(record["input_shape"]) or net.head is None or net.head.classes != record["classes"]:
        raise _fail(d.BAD_FILE, "invalid model record: its input shape or classes are not its spec's", where,
                    "the file was edited; export it again with densedsl compile RUN_DIR -o OUT")
    return spec


def _pipeline(record: dict) -> Pipeline | None:
    return Pipeline.from_record(record["pipeline"]) if "pipeline" in record else None


def _torch_predictor(record: dict, state: Any, where: Path, device: str) -> Predictor:
    from ..nn.build import build_model
    from ..nn.weights import load_weights
    from .transfer import _naming
    spec = _spec_of(record, where)
    model = build_model(spec.network)
    try:
        load_weights(model, state, cli=True)
    except SpecError as e:
        raise _naming(e, where) from None
    model = model.eval().to(device)

    def run(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(device)).float().cpu()
    return Predictor(model=run, record=record, source=str(where), pipeline=_pipeline(record))


def _onnx_predictor(path: Path) -> Predictor:
    from ..core.optional import require
    ort = require("onnxruntime", "predicting with an .onnx model")
    from onnxruntime.capi import onnxruntime_pybind11_state as state
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except (state.Fail, state.InvalidProtobuf, state.InvalidArgument, state.NoSuchFile, state.InvalidGraph,
            state.RuntimeException) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise _fail(d.BAD_FILE, f"cannot read the ONNX model: {first[:300]}", path,
                    "pass an .onnx written by densedsl compile RUN_DIR -o model.onnx") from None
    found = model_record.from_onnx(dict(session.get_modelmeta().custom_metadata_map))
    if found is None:
        raise _fail(d.BAD_FILE, "the ONNX model carries no densedsl record (metadata_props 'densedsl')", path,
                    "export it with densedsl compile RUN_DIR -o model.onnx")
    record = model_record.checked(found, path)
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.contiguous().numpy()})[0]).float()
    return Predictor(model=run, record=record, source=str(path), pipeline=_pipeline(record))


# --- reading inputs ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Inputs:
    names: list[str]                              # one per input: a path, or an index
    batches: Callable[[], Iterator[torch.Tensor]]  # raw input, BATCH at a time


def read_inputs(predictor: Predictor, data: Sequence[str]) -> Inputs:
    """What `--data` names, checked against the model (E207 for the wrong kind or shape)."""
    if not data:
        raise _fail(d.MISSING, "no input to predict", None, "pass --data DIR, image files, FILE.csv or FILE.npy")
    kinds = [_kind_of(item) for item in data]
    if len(set(k for k, _ in kinds)) > 1 or (len(kinds) > 1 and kinds[0][0] not in ("image", "nifti")):
        raise _fail(d.CONFLICT, "--data mixes kinds of input, or names more than one table or array", None,
                    "pass one CSV file, one .npy file, or images (files or directories)")
    kind = kinds[0][0]
    paths = [path for _, path in kinds]
    if predictor.tabular and kind != "csv":
        raise _fail(d.DATA_MISMATCH, "the model was trained on a table: it predicts from CSV rows", paths[0],
                    "pass --data FILE.csv with the columns it was trained with")
    if kind == "csv":
        if not predictor.tabular:
            raise _fail(d.DATA_MISMATCH, "the model takes images, signals or volumes, not table rows", paths[0],
                        "pass image files, a directory of images, or a .npy array")
        return _csv_inputs(predictor, paths[0])
    if kind == "npy":
        return _npy_inputs(predictor, paths[0])
    if kind == "nifti":
        return _nifti_inputs(predictor, paths)
    return _image_inputs(predictor, paths)


def _kind_of(item: str) -> tuple[str, Path]:
    from .datasets import IMAGE_SUFFIXES
    from .nifti import is_volume
    prefix, sep, rest = item.partition(":")
    if sep and prefix in ("csv", "npy", "folder", "nifti"):
        path = Path(rest)
        return ("image" if prefix == "folder" else prefix), path
    path = Path(item)
    require_regular(path, "input")
    if path.is_dir():  # of volumes when it holds any (and so no images were meant)
        return ("nifti" if any(is_volume(f) for f in path.rglob("*")) else "image"), path
    if is_volume(path):
        return "nifti", path
    if not path.exists():
        raise _fail(d.FILE_NOT_FOUND, "no such file or directory", path,
                    "pass a directory of images, image files, FILE.csv or FILE.npy")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".npy"):
        return suffix[1:], path
    if suffix in IMAGE_SUFFIXES:
        return "image", path
    raise _fail(d.UNKNOWN_DATASET, f"cannot tell what '{suffix or 'no extension'}' holds", path,
                "name it .csv, .npy or an image suffix (.png, .jpg ...), or write csv:FILE / npy:FILE")


def _csv_inputs(predictor: Predictor, path: Path) -> Inputs:
    assert predictor.pipeline is not None
    require_regular(path, "CSV file")
    if not path.is_file():
        raise _fail(d.FILE_NOT_FOUND, "no such CSV file", path)
    table = read_csv(path)
    if not table.rows:
        raise _fail(d.NO_DATA, "the CSV file holds no rows", path, "add rows under the header")
    features = predictor.pipeline.features(table)  # E207 names a feature column the file lacks
    return Inputs([str(i) for i in range(len(features))],
                  lambda: iter(features.split(BATCH)))


def _npy_inputs(predictor: Predictor, path: Path) -> Inputs:
    import numpy as np
    require_regular(path, "array file")
    if not path.is_file():
        raise _fail(d.FILE_NOT_FOUND, "no such .npy file", path)
    if path.stat().st_size > loaded.MAX_FILE_BYTES:
        raise _fail(d.OUT_OF_MEMORY, f"the file is larger than the {loaded.MAX_FILE_BYTES / 2**30:.0f} GiB "
                    "densedsl reads at once", path, "split it into several files")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise _fail(d.BAD_FILE, f"cannot read the array: {str(e)[:200]}", path,
                    "pass a .npy file written by numpy.save, of numbers (no objects)") from None
    shape = predictor.input_shape
    if tuple(array.shape) == shape:
        array = array[None]
    if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != shape:
        raise _fail(d.DATA_MISMATCH, f"the array is {'x'.join(map(str, array.shape)) or 'a scalar'}; the model "
                    f"takes N x {'x'.join(map(str, shape))}", path,
                    "stack the inputs along the first axis, each of the spec's input shape")
    if array.dtype.kind not in "uif" or array.dtype.kind == "f" and not np.isfinite(array).all():
        raise _fail(d.BAD_FILE, f"the array holds {array.dtype} values" + (
            ", some not finite" if array.dtype.kind == "f" else ""), path, "pass finite numbers")
    if len(array) == 0:
        raise _fail(d.NO_DATA, "the array holds no inputs", path)
    values = torch.from_numpy(np.ascontiguousarray(array))
    return Inputs([str(i) for i in range(len(values))], lambda: iter(values.split(BATCH)))


def _nifti_inputs(predictor: Predictor, paths: list[Path]) -> Inputs:
    from .nifti import is_volume, volumes
    files: list[Path] = []
    for path in paths:
        found = sorted(f for f in path.rglob("*") if is_volume(f) and f.is_file()) if path.is_dir() else [path]
        if not found:
            raise _fail(d.NO_DATA, "no .nii or .nii.gz files under the directory", path)
        files += found
    checked = volumes(files, predictor.input_shape)  # every header before any voxels

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(checked), BATCH):
            yield torch.stack([v.read() for v in checked[start:start + BATCH]])
    return Inputs([str(f) for f in files], batches)


def _image_inputs(predictor: Predictor, paths: list[Path]) -> Inputs:
    from .datasets import IMAGE_SUFFIXES, _read_image
    shape = predictor.input_shape
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise _fail(d.DATA_MISMATCH, f"the model's input is {'x'.join(map(str, shape))}; images are read "
                    "as 1 (grey) or 3 (RGB) channels of H x W", paths[0], "pass a .npy array of inputs")
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise _fail(d.NO_DATA, f"no image files ({', '.join(IMAGE_SUFFIXES)}) under the directory", path)
            files += found
        elif not path.exists():
            raise _fail(d.FILE_NOT_FOUND, "no such image", path)
        else:
            files.append(path)

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(files), BATCH):
            yield torch.stack([_read_image(f, shape) for f in files[start:start + BATCH]])
    return Inputs([str(f) for f in files], batches)


# --- predicting and writing ----------------------------------------------------------------------

def predict(predictor: Predictor, data: Sequence[str], *, top_k: int = 1) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of the predictions for what `data` names."""
    if predictor.task == "regression" and top_k != 1:
        raise _fail(d.CONFLICT, "--top-k applies to classifiers; the model is a regression", "--top-k")
    if not 1 <= top_k <= len(predictor.class_names):
        raise _fail(d.OUT_OF_RANGE, f"--top-k must be between 1 and the model's {len(predictor.class_names)} "
                    f"classes, not {top_k}", "--top-k")
    inputs = read_inputs(predictor, data)
    answers = torch.cat([predictor(batch) for batch in inputs.batches()])
    if predictor.task == "regression":
        assert predictor.pipeline is not None
        return (["input", predictor.pipeline.target],
                [[name, float(v)] for name, v in zip(inputs.names, answers.tolist())])
    probabilities, indices = answers.topk(top_k, dim=1)
    names = predictor.class_names
    if top_k == 1:
        header = ["input", "class", "probability"]
    else:
        header = ["input"] + [f"{what}_{k}" for k in range(1, top_k + 1) for what in ("class", "probability")]
    rows = [[name] + [x for i, p in zip(ix, ps) for x in (names[i], p)]
            for name, ix, ps in zip(inputs.names, indices.tolist(), probabilities.tolist())]
    return header, rows


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{x:.8g}" if isinstance(x, float) and math.isfinite(x) else x for x in row])
    return buf.getvalue()


def run(model: str, data: Sequence[str], *, output: str | None = None, top_k: int = 1,
        device: str = "cpu") -> tuple[Predictor, str]:
    """`densedsl predict`: the CSV text, written atomically to `output` when given."""
    if output is not None:
        if Path(output).suffix.lower() != ".csv":
            raise _fail(d.BAD_OUTPUT, "predictions are written as CSV", output, "name the output .csv")
        check_writable(output)
    predictor = load_predictor(model, device=device)
    text = csv_text(*predict(predictor, data, top_k=top_k))
    if output is not None:
        atomic_write(output, text)
    return predictor, text
