"""The tabular pipeline as a record: what `compile --weights` writes next to a model trained on
a table (OUT.pipeline.json), how such a record is checked before it is trusted (by `eval`, the
checkpoint schema and `encode_csv`), and how new rows are encoded with it."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..core import diagnostics as d
from .tabular import TASKS, Pipeline, _fail, _short, read_csv

# --- exported models ---------------------------------------------------------------------------

PIPELINE_FORMAT = "densedsl-tabular-pipeline"


def exported(pipeline: Pipeline, data_name: str) -> dict:
    """What `compile --weights` writes next to a model trained on tabular data (OUT.pipeline.json):
    the exported model takes encoded rows, so this says how to encode one and read the output."""
    output = (f"one value: the standardised {pipeline.target}; the prediction is "
              f"output * target_std + target_mean" if pipeline.task == "regression"
              else f"{len(pipeline.classes)} logits, one per class in 'classes' order (softmax for probabilities)")
    return {"format": PIPELINE_FORMAT, "version": 1, "data": data_name,
            "input": f"float32 rows of {pipeline.width} features, in 'features' order: numeric columns "
                     "standardised, (x - mean) / std, missing -> 0; categorical columns one-hot over "
                     "'categories' plus a last column for missing (an unseen value: all zeros)",
            "output": output, "features": pipeline.feature_names(), "pipeline": pipeline.record()}



def encode_csv(pipeline: dict, path: str | os.PathLike) -> torch.Tensor:
    """The exported model's input for the rows of a CSV file, from OUT.pipeline.json's content
    (or a checkpoint's data.pipeline): `encode_csv(json.load(f), "new.csv")`. A record that
    `Pipeline.record` could not have written is refused (E908) before the file is read."""
    record = pipeline.get("pipeline", pipeline) if isinstance(pipeline, dict) else pipeline
    problems = record_problems(record)
    if problems:
        raise _fail(d.BAD_FILE, f"invalid tabular pipeline: {problems[0]}"
                    + (f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
                       if len(problems) > 1 else ""), "pipeline",
                    "pass the content of the OUT.pipeline.json that `compile --weights` wrote, unedited")
    return Pipeline.from_record(record).features(read_csv(Path(path)))


# --- checking a pipeline record --------------------------------------------------------------------

_RECORD_KEYS = ("target", "task", "target_mean", "target_std", "target_floor", "classes", "columns")
_COLUMN_KEYS = ("name", "kind", "mean", "std", "categories")


def _finite(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past float's range (JSON has no limit)
        return False


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _distinct_strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value) and len(set(value)) == len(value)


def record_problems(record: object) -> list[str]:
    """What is wrong with a pipeline record (`Pipeline.record`'s dict, e.g. from a checkpoint or
    an edited OUT.pipeline.json), one line each; [] when `Pipeline.from_record` and `features`
    can use it as it stands. Beyond the shapes of the entries: every statistic finite, every
    standard deviation above 0 (`fit` gives constant columns std 1, so 0 never comes from it
    and would encode to inf), and no column named after the target (the model would be fed
    what it is to predict)."""
    if not isinstance(record, dict):
        return [f"the pipeline must be a JSON object, not {_shown(record)}"]
    missing = [k for k in _RECORD_KEYS if k not in record]
    if missing:
        return [f"the pipeline lacks {', '.join(repr(k) for k in missing)}"]
    problems = []

    def need(ok: bool, where: str, what: str, value: object) -> None:
        if not ok:
            problems.append(f"'{where}' must be {what}, not {_shown(value)}")

    need(isinstance(record["target"], str), "target", "a column name", record["target"])
    need(record["task"] in TASKS, "task", " or ".join(repr(t) for t in TASKS), record["task"])
    need(_finite(record["target_mean"]), "target_mean", "a finite number", record["target_mean"])
    need(_finite(record["target_std"]) and record["target_std"] > 0, "target_std", "a finite number > 0",
         record["target_std"])
    floor = record["target_floor"]
    need(floor is None or (_finite(floor) and floor > 0), "target_floor", "null or a finite number > 0", floor)
    need(_distinct_strings(record["classes"]), "classes", "a list of distinct strings", record["classes"])
    columns = record["columns"]
    if not isinstance(columns, list):
        return problems + [f"'columns' must be a list, not {_shown(columns)}"]
    for i, column in enumerate(columns):
        problems += _column_problems(column, f"columns[{i}]")
        if len(problems) >= 10:
            return problems
    names = [c["name"] for c in columns if isinstance(c, dict) and isinstance(c.get("name"), str)]
    if len(set(names)) != len(names):
        problems.append("'columns' names a column twice")
    if record["target"] in set(names):
        problems.append(f"'columns' holds the target '{_short(str(record['target']))}' as a feature: the model "
                        "would be given what it is to predict")
    return problems


def _column_problems(column: object, where: str) -> list[str]:
    if not isinstance(column, dict):
        return [f"'{where}' must be an object, not {_shown(column)}"]
    missing = [k for k in _COLUMN_KEYS if k not in column]
    if missing:
        return [f"'{where}' lacks {', '.join(repr(k) for k in missing)}"]
    checks = [
        (isinstance(column["name"], str), "name", "a column name"),
        (column["kind"] in ("numeric", "categorical"), "kind", "'numeric' or 'categorical'"),
        (_finite(column["mean"]), "mean", "a finite number"),
        (_finite(column["std"]) and column["std"] > 0, "std", "a finite number > 0 (a constant column has std 1)"),
        (_distinct_strings(column["categories"]), "categories", "a list of distinct strings"),
    ]
    return [f"'{where}.{key}' must be {what}, not {_shown(column[key])}" for ok, key, what in checks if not ok]
