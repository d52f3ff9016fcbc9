"""`densedsl compile RUN_DIR -o OUT.pt|.onnx|.py`: a run directory exported with everything it
carries, the spec as trained (its `--set` values applied) and the preprocessing (`model_record`),
so OUT.pt and OUT.onnx predict on their own (`densedsl predict OUT`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

from ..core.diagnostics import printable_line
from ..core.files import atomic_path, atomic_write
from . import checkpoints, model_record
from .tabular import Pipeline
from .tabular_record import exported


def is_run(path: str | os.PathLike) -> bool:
    """A run directory written by densedsl train (it holds a checkpoint)."""
    p = Path(path)
    return p.is_dir() and (p / checkpoints.CHECKPOINT).is_file()


def run_spec(run_dir: str | os.PathLike, ckpt: dict | None = None):
    """The Spec a run trained, its `--set` values applied (from the checkpoint, not spec.dense)."""
    ckpt = ckpt if ckpt is not None else checkpoints.read(run_dir)
    if ckpt["spec"] is None:
        raise checkpoints.invalid(Path(run_dir), "the checkpoint holds no spec text (it was trained from a "
                                  "Network object)", "rebuild the model and pass the spec file with "
                                  "--weights RUN_DIR")
    return checkpoints.spec_from_record(ckpt["spec"])


def record_for(weights: str | os.PathLike, spec) -> dict | None:
    """The model record for weights loaded into `spec`'s model, when they are a densedsl
    checkpoint (or its run directory); None for other weights files."""
    path = Path(weights)
    if path.is_dir():
        path = checkpoints.model_file(path)
    from ..core.diagnostics import SpecError
    try:
        ckpt = checkpoints.read(path)
    except SpecError:  # another kind of weights file: the caller has loaded it already
        return None
    return {**model_record.from_checkpoint(ckpt), "spec": checkpoints.spec_record(spec)}


def write_pipeline(record: dict | None, output: str | os.PathLike, write_model: Callable[[], None]) -> None:
    """Write the model (`write_model`) and, beside one trained on a table, OUT.pipeline.json (how to
    encode its input rows): both or neither. The pipeline is written to a temporary first and
    published only once the model is written; a failure on either leaves neither."""
    if record is None or "pipeline" not in record:
        write_model()
        return
    pipeline = exported(Pipeline.from_record(record["pipeline"]), record["data"])
    path = Path(output).with_suffix(".pipeline.json")
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(pipeline, indent=1) + "\n", encoding="utf-8")
        write_model()
    print(f"{printable_line(str(path))}: how to encode its input rows ({pipeline['pipeline']['target']}, "
          f"{len(pipeline['features'])} features)", file=sys.stderr)


def export_run(run_dir: str | os.PathLike, output: str | os.PathLike, *, memory: str = "standard"):
    """Write the run's model to `output` (.pt with its record, .onnx with it in metadata_props,
    .py the source of the spec as trained); returns (the Spec, its Analysis)."""
    from ..analysis import budget
    from ..analysis.figures import analyze
    from ..nn.build import build_model
    from ..nn.export import check_output, python_source
    from ..nn.weights import load_weights
    kind = check_output(output)
    ckpt = checkpoints.read(run_dir)
    record = model_record.from_checkpoint(ckpt)
    spec = run_spec(run_dir, ckpt)
    a = analyze(spec.network)
    if kind == ".py":
        atomic_write(output, python_source(spec.network))
        return spec, a
    budget.require(budget.for_onnx(a) if kind == ".onnx" else budget.for_weights_file(a, "writing the weights of"),
                   spec.network)
    from ..nn.model import DenseNet
    model = build_model(spec.network, memory=memory)
    assert isinstance(model, DenseNet)  # features_only is not asked for
    load_weights(model, ckpt["model"])
    model.eval()
    write_pipeline(record, output, lambda: write_with_record(model, record, output))
    return spec, a


def write_with_record(model, record: dict, output: str | os.PathLike) -> None:
    """OUT.onnx with the record in its metadata_props, or OUT.pt with it in the state_dict's _metadata."""
    from ..nn.export import write_onnx
    if Path(output).suffix.lower() == ".onnx":
        write_onnx(model, output, metadata=model_record.onnx_props(record))
    else:
        model_record.write_pt(model, record, output)
