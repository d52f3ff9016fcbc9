"""The checkpoint schema: every entry of a densedsl training checkpoint, its type and its range.

`problem_in` names the first entry densedsl would not have written (`checkpoints.check` turns it
into E908), so a crafted file is refused naming the field instead of failing with a KeyError, a
ZeroDivisionError or NaNs deep inside training or evaluation. The training settings' rules
(`SETTINGS`, `setting_problems`) are the ones `train` checks its arguments against: a
checkpoint can hold no setting that `train` would refuse.
"""

from __future__ import annotations

import math
import numbers
import random
from typing import Any, Callable, Iterable, Mapping

import torch

from ..nn.weights import non_finite_count
from .tabular_record import record_problems

FORMAT = "densedsl-checkpoint"
FORMAT_VERSION = 1
METRIC_FIELDS = ("epoch", "steps", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                 "images_per_s", "seconds")
# A regression's rows: losses are MSEs of the standardised target, RMSEs in the target's units;
# test_log_rmse (d2l's house-price score) only when every target is positive.
REGRESSION_FIELDS = ("epoch", "steps", "lr", "train_loss", "train_rmse", "test_loss", "test_rmse",
                     "test_log_rmse", "rows_per_s", "seconds")
AUGMENTATIONS = ("none", "flip", "crop", "crop+flip", "resized-crop+flip")  # datasets.AUGMENTATIONS (a test keeps both equal)
MEMORY_MODES = ("standard", "efficient")                  # compiler.MEMORY_MODES
DATA_KINDS = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "folder", "synthetic", "csv", "diabetes",
              "npy", "npz", "nifti")
TABULAR_KINDS = ("csv", "diabetes")
MAX_SPEC_CHARS = 16 * 1024 * 1024                          # files._MAX_BYTES: a spec is a short text


# --- values ----------------------------------------------------------------------------------------

def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, torch.Tensor) else f"a tensor of shape {tuple(value.shape)}"
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


Rule = Callable[[Any], str | None]  # None, or what the value should have been


def integer(low: int | None = None, high: int | None = None) -> Rule:
    """An integer (not a bool) from `low` to `high`, both included."""
    def rule(value: Any) -> str | None:
        if _is_int(value) and (low is None or value >= low) and (high is None or value <= high):
            return None
        if low is not None and high is not None:
            return f"an integer from {low:,} to {high:,}" if low != high else f"the integer {low}"
        return "an integer" + (f" ≥ {low:,}" if low is not None else "") + (f" ≤ {high:,}" if high is not None else "")
    return rule


def real(low: float | None = None, *, above: bool = False) -> Rule:
    """A finite number, at least `low` (or, with `above`, more than it)."""
    def rule(value: Any) -> str | None:
        ok = _is_real(value) and math.isfinite(value) and (
            low is None or (value > low if above else value >= low))
        return None if ok else "a finite number" + (f" {'>' if above else '≥'} {low:g}" if low is not None else "")
    return rule


def one_of(choices: Iterable[Any]) -> Rule:
    choices = tuple(choices)
    return lambda value: None if isinstance(value, str) and value in choices else \
        "one of " + ", ".join(map(repr, choices))


def instance(kind: type | tuple[type, ...], what: str) -> Rule:
    return lambda value: None if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)) \
        else what


def optional(rule: Rule) -> Rule:
    return lambda value: None if value is None else (None if rule(value) is None else f"None or {rule(value)}")


def sequence_of(rule: Rule, *, length: int | None = None, at_least: int = 0, at_most: int = 10_000) -> Rule:
    def check(value: Any) -> str | None:
        n = len(value) if isinstance(value, (list, tuple)) else None
        ok = n is not None and (n == length if length is not None else at_least <= n <= at_most) \
            and all(rule(v) is None for v in value)
        if ok:
            return None
        count = f"{length}" if length is not None else f"{at_least} to {at_most:,}"
        return f"a list of {count} value{'' if count == '1' else 's'}, each {rule(None) or 'valid'}"
    return check


def _normalize_setting(value: Any) -> bool:
    """train --normalize: a name (normalize.NAMED), or MEAN,STD with STD > 0."""
    if value in ("auto", "data", "imagenet", "none"):
        return True
    parts = value.split(",") if isinstance(value, str) else []
    try:
        numbers_ = [float(p) for p in parts]
    except ValueError:
        return False
    return len(numbers_) == 2 and all(math.isfinite(x) for x in numbers_) and numbers_[1] > 0


# --- training settings -----------------------------------------------------------------------------

# One rule per `train.Config` field (a test keeps the two in step). `train` checks its arguments
# with the same rules, so no checkpoint it writes can fail them.
SETTINGS: dict[str, Rule] = {
    "data": instance(str, "a data set name"),
    "epochs": integer(1, 10**9),
    "batch_size": integer(1, 2**31 - 1),
    "lr": real(0),
    "momentum": real(0),
    "nesterov": instance(bool, "True or False"),
    "weight_decay": real(0),
    "milestones": sequence_of(real(0, above=True), at_most=1000),
    "gamma": real(0, above=True),
    "augment": one_of(AUGMENTATIONS),
    "seed": integer(-(2**63), 2**63 - 1),
    "device": instance(str, "a device name"),
    "amp": one_of(("bf16", "fp16", "off")),
    "memory": one_of(MEMORY_MODES),
    "workers": integer(0, 1024),
    "sync_bn": instance(bool, "True or False"),
    "max_steps": optional(integer(1)),
    "init": optional(instance(str, "a weights file path")),
    "optimizer": one_of(("sgd", "adamw")),
    "schedule": one_of(("step", "cosine")),
    "warmup": integer(0, 10**9),
    "label_smoothing": real(0),
    "grad_clip": optional(real(0, above=True)),
    "freeze": sequence_of(instance(str, "a stage name"), at_most=10_000),
    "head_lr": optional(real(0)),
    "target": optional(instance(str, "a column name")),
    "val_split": optional(real(0, above=True)),
    "keep": one_of(("last", "best")),
    "patience": optional(integer(1, 10**9)),
    "normalize": lambda v: None if _normalize_setting(v) else "auto, data, imagenet, none or MEAN,STD",
    "normalize_why": instance(str, "whose statistics normalise the input"),
    "freeze_bn": instance(bool, "True or False"),
    "drop": sequence_of(instance(str, "a column name"), at_most=100_000),
    "threads": integer(0, 4096),                          # recorded only; 0: not recorded
    "threads_why": instance(str, "who chose the threads"),
}
# Settings added after format 1 shipped, with the value a checkpoint that lacks one was trained
# with: older checkpoints still load, and resume as they were.
LATER_SETTINGS: dict[str, Any] = {"init": None, "optimizer": "sgd", "schedule": "step", "warmup": 0,
                                  "label_smoothing": 0.0, "grad_clip": None, "freeze": [], "head_lr": None,
                                  "target": None, "threads": 0, "threads_why": "", "val_split": None,
                                  "keep": "last", "patience": None, "normalize": "data", "normalize_why": "",
                                  "freeze_bn": False, "drop": []}


def setting_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(setting, what it must be) for each value in `values` that breaks its rule, plus the one
    rule between two settings (torch refuses Nesterov momentum without momentum)."""
    problems = []
    for key, value in values.items():
        rule = SETTINGS.get(key)
        want = rule(value) if rule is not None else None
        if want is not None:
            problems.append((key, f"must be {want}, not {_shown(value)}"))
    if values.get("nesterov") is True and _is_real(values.get("momentum")) and values["momentum"] == 0:
        problems.append(("nesterov", "must be False when momentum is 0 (Nesterov momentum needs momentum)"))
    if _is_real(values.get("val_split")) and values["val_split"] >= 1:
        problems.append(("val_split", f"must be below 1 (a fraction of the training split), not "
                                      f"{_shown(values['val_split'])}"))
    if _is_real(values.get("label_smoothing")) and values["label_smoothing"] >= 1:
        problems.append(("label_smoothing", f"must be below 1, not {_shown(values['label_smoothing'])}"))
    if _is_int(values.get("warmup")) and values["warmup"] > 0 and values.get("schedule", "step") != "cosine":
        problems.append(("warmup", "needs --schedule cosine (the step schedule has no warm-up)"))
    if _is_int(values.get("warmup")) and _is_int(values.get("epochs")) and values["warmup"] >= values["epochs"] > 0:
        problems.append(("warmup", f"must be fewer epochs than the run's {values['epochs']}"))
    return problems


# --- the schema ------------------------------------------------------------------------------------

class _Invalid(Exception):
    pass


def _need(ok: bool, where: str, want: str, value: Any) -> None:
    if not ok:
        raise _Invalid(f"'{where}' must be {want}, not {_shown(value)}")


def _rule(rule: Rule, where: str, value: Any) -> None:
    want = rule(value)
    if want is not None:
        raise _Invalid(f"'{where}' must be {want}, not {_shown(value)}")


def _entries(record: Any, where: str, required: Iterable[str], optional_keys: Iterable[str] = ()) -> dict:
    """`record` as a dict with exactly the `required` keys (plus any of `optional_keys`)."""
    _need(isinstance(record, dict), where, "a dict", record)
    required = tuple(required)
    missing = [k for k in required if k not in record]
    if missing:
        raise _Invalid(f"'{where}' has no entry '{missing[0]}'" if where else f"no entry '{missing[0]}'")
    extra = [k for k in record if k not in required and k not in tuple(optional_keys)]
    if extra:
        raise _Invalid(f"'{where}' has an unexpected entry {_shown(extra[0])}" if where
                       else f"unexpected entry {_shown(extra[0])}")
    return record


def _finite_tensor(value: Any, where: str) -> None:
    _need(isinstance(value, torch.Tensor) and value.layout == torch.strided and value.device.type != "meta",
          where, "a dense tensor", value)
    bad = non_finite_count(value)  # reads no more than the file holds, whatever the view's shape
    if bad:
        raise _Invalid(f"'{where}' holds {bad} non-finite values (NaN or infinity)")


TOP_LEVEL = ("format", "version", "epoch", "model", "optimizer", "scheduler", "scaler", "rng", "metrics",
             "config", "spec", "network", "data", "torch")


def problem_in(ckpt: Any) -> str | None:
    """What is wrong with a loaded checkpoint, or None. Checks every entry's type and range and
    that the entries agree with each other; no tensor is trusted to be finite."""
    try:
        _schema(ckpt)
    except _Invalid as e:
        return str(e)
    return None


def _schema(ckpt: Any) -> None:
    _entries(ckpt, "", TOP_LEVEL)
    _need(ckpt["format"] == FORMAT, "format", repr(FORMAT), ckpt["format"])
    _rule(integer(1, FORMAT_VERSION), "version", ckpt["version"])
    config = _entries(ckpt["config"], "config", [k for k in SETTINGS if k not in LATER_SETTINGS],
                      LATER_SETTINGS)
    for key, problem in setting_problems(config):
        raise _Invalid(f"'config.{key}' {problem}")
    _rule(integer(1, config["epochs"]), "epoch", ckpt["epoch"])
    _need(isinstance(ckpt["model"], dict) and len(ckpt["model"]) > 0, "model", "a non-empty state_dict",
          ckpt["model"])
    for key, value in ckpt["model"].items():
        _need(isinstance(key, str), "model", "a dict with str keys", key)
        _finite_tensor(value, f"model.{key}")
    _optimizer(ckpt["optimizer"])
    _scheduler(ckpt["scheduler"], ckpt["epoch"])
    _scaler(ckpt["scaler"])
    _rng(ckpt["rng"])
    _metrics(ckpt["metrics"], ckpt["epoch"])
    _spec(ckpt["spec"])
    _rule(instance(str, "a network name"), "network", ckpt["network"])
    if ckpt["spec"] is not None:
        _need(ckpt["network"] == ckpt["spec"]["network"], "network", f"the spec's network "
              f"{ckpt['spec']['network']!r}", ckpt["network"])
    _data(ckpt["data"])
    regression = ckpt["data"].get("task") == "regression"
    for i, row in enumerate(ckpt["metrics"]):
        _need(("test_rmse" in row or "val_rmse" in row) == regression, f"metrics[{i}]",
              "a regression's row" if regression else "a classifier's row", row)
    _rule(instance(str, "a version string"), "torch", ckpt["torch"])


def _optimizer(state: Any) -> None:
    _entries(state, "optimizer", ("state", "param_groups"))
    _need(isinstance(state["param_groups"], list) and bool(state["param_groups"]), "optimizer.param_groups",
          "a non-empty list", state["param_groups"])
    for i, group in enumerate(state["param_groups"]):
        where = f"optimizer.param_groups[{i}]"
        _need(isinstance(group, dict) and "params" in group and "lr" in group, where,
              "a dict with 'params' and 'lr'", group)
        _rule(sequence_of(integer(0), at_most=10**7), f"{where}.params", group["params"])
        for key in ("lr", "initial_lr", "momentum", "dampening", "weight_decay"):
            if key in group:
                _rule(real(0), f"{where}.{key}", group[key])
    _need(isinstance(state["state"], dict), "optimizer.state", "a dict", state["state"])
    for key, entry in state["state"].items():
        _need(_is_int(key) and isinstance(entry, dict), "optimizer.state", "a dict of int: dict", key)
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                _finite_tensor(value, f"optimizer.state[{key}].{name}")


def _scheduler_entries() -> dict[str, type]:
    """The entries this torch's MultiStepLR (step) and LambdaLR (cosine) state_dicts have, and
    their types."""
    param = torch.zeros(1, requires_grad=True)
    fresh = {**torch.optim.lr_scheduler.MultiStepLR(torch.optim.SGD([param], lr=0.1), [1]).state_dict(),
             **torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([param], lr=0.1), lambda e: 1.0).state_dict()}
    kinds = {bool: bool, int: int, float: numbers.Real}
    return {k: kinds.get(type(v), dict if isinstance(v, dict) else type(v)) for k, v in fresh.items()}


def _scheduler(state: Any, epoch: int) -> None:
    # MultiStepLR.load_state_dict copies every entry onto the object: only its own names may pass.
    known = _scheduler_entries()
    _need(isinstance(state, dict), "scheduler", "a dict", state)
    for key, value in state.items():
        _need(key in known, "scheduler", f"a dict of {', '.join(known)}", key)
        names = {bool: "True or False", int: "an integer", numbers.Real: "a number", list: "a list",
                 dict: "a dict"}
        _need(isinstance(value, known[key]) and not (known[key] is not bool and isinstance(value, bool)),
              f"scheduler.{key}", names.get(known[key], known[key].__name__), value)
    _need(state.get("last_epoch") == epoch, "scheduler.last_epoch", f"the checkpoint's epoch ({epoch})",
          state.get("last_epoch"))
    for key in ("base_lrs", "_last_lr"):
        if key in state:
            _rule(sequence_of(real(0), at_least=1), f"scheduler.{key}", state[key])
    if "gamma" in state:
        _rule(real(0, above=True), "scheduler.gamma", state["gamma"])
    if "lr_lambdas" in state:  # LambdaLR would copy a dict entry onto the function: only None
        _need(all(f is None for f in state["lr_lambdas"]), "scheduler.lr_lambdas", "a list of None",
              state["lr_lambdas"])
    for milestone, count in state.get("milestones", {}).items():
        _need(_is_int(milestone) and _is_int(count) and count >= 1, "scheduler.milestones",
              "a Counter of epochs", state["milestones"])


def _scaler(state: Any) -> None:
    _need(isinstance(state, dict), "scaler", "a dict", state)
    if state:
        _entries(state, "scaler", ("scale", "growth_factor", "backoff_factor", "growth_interval",
                                   "_growth_tracker"))
        for key in ("scale", "growth_factor", "backoff_factor"):
            _rule(real(0, above=True), f"scaler.{key}", state[key])
        for key in ("growth_interval", "_growth_tracker"):
            _rule(integer(0), f"scaler.{key}", state[key])


def _rng(states: Any) -> None:
    _need(isinstance(states, list) and 1 <= len(states) <= 65536, "rng", "a list of 1 or more states", states)
    torch_state_size = torch.get_rng_state().numel()
    for i, state in enumerate(states):
        where = f"rng[{i}]"
        _entries(state, where, ("python", "torch", "cuda"))
        py = _entries(state["python"], f"{where}.python", ("version", "state", "gauss"))
        tensor = py["state"]
        _need(isinstance(tensor, torch.Tensor) and tensor.dtype == torch.int64 and tensor.dim() == 1,
              f"{where}.python.state", "an int64 tensor", tensor)
        try:  # random.setstate is the authority on what a Mersenne Twister state is
            random.Random().setstate((py["version"], tuple(tensor.tolist()), py["gauss"]))
        except (TypeError, ValueError, OverflowError) as e:
            raise _Invalid(f"'{where}.python' is not a Python random state ({e})") from None
        _need(isinstance(state["torch"], torch.Tensor) and state["torch"].dtype == torch.uint8
              and state["torch"].shape == (torch_state_size,), f"{where}.torch",
              f"a uint8 tensor of {torch_state_size} bytes", state["torch"])
        try:
            torch.Generator().set_state(state["torch"])
        except RuntimeError as e:
            raise _Invalid(f"'{where}.torch' is not a torch random state ({e})") from None
        _need(isinstance(state["cuda"], list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8
                                                        for t in state["cuda"]),
              f"{where}.cuda", "a list of uint8 tensors", state["cuda"])


def _metrics(rows: Any, epoch: int) -> None:
    _need(isinstance(rows, list) and len(rows) == epoch, "metrics", f"a list of {epoch} rows (one per epoch)",
          rows)
    for i, row in enumerate(rows):
        where = f"metrics[{i}]"
        held_out = "val" if isinstance(row, dict) and "val_loss" in row else "test"  # train --val-split
        regression = isinstance(row, dict) and f"{held_out}_rmse" in row
        fields = tuple(f.replace("test_", f"{held_out}_") for f in (REGRESSION_FIELDS if regression else METRIC_FIELDS))
        log = f"{held_out}_log_rmse"
        _entries(row, where, [f for f in fields if f != log], ((log,) if regression else ()) + ("head_lr",))
        if "head_lr" in row:  # train --head-lr: the classifier's own rate
            _rule(real(0), f"{where}.head_lr", row["head_lr"])
        _need(row["epoch"] == i + 1 and _is_int(row["epoch"]), f"{where}.epoch", str(i + 1), row["epoch"])
        _rule(integer(0), f"{where}.steps", row["steps"])
        for key in fields[2:]:
            if key in row:
                _rule(real(0), f"{where}.{key}", row[key])
        if i:
            _need(set(row) == set(rows[0]), where, "a row of the same entries as metrics[0]", row)


def _portable_value(value: Any) -> bool:
    if isinstance(value, dict):
        fraction = value.get("fraction") if set(value) == {"fraction"} else None
        return isinstance(fraction, list) and len(fraction) == 2 and all(_is_int(v) for v in fraction) \
            and fraction[1] != 0
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (bool, int, str))


def _spec(record: Any) -> None:
    if record is None:
        return
    _entries(record, "spec", ("text", "source", "network", "overrides"))
    _need(isinstance(record["text"], str) and len(record["text"]) <= MAX_SPEC_CHARS, "spec.text",
          "the spec's text (at most 16 MiB)", record["text"])
    for key in ("source", "network"):
        _rule(instance(str, "a string"), f"spec.{key}", record[key])
    overrides = record["overrides"]
    _need(isinstance(overrides, list) and len(overrides) <= 10_000, "spec.overrides", "a list", overrides)
    for i, item in enumerate(overrides):
        _need(isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
              and _portable_value(item[1]), f"spec.overrides[{i}]",
              "[name, value] with a number, string, yes/no or fraction (nonzero denominator)", item)


def _data(record: Any) -> None:
    # synthetic data for a vector input trains with the tabular recipe, and records a pipeline
    if isinstance(record, dict) and (record.get("kind") in TABULAR_KINDS or "pipeline" in record):
        return _tabular_data(record)
    data = _entries(record, "data", ("name", "kind", "shape", "classes", "class_names", "pixel_max",
                                     "mean", "std"), ("baseline",))
    _baseline(data)
    _rule(instance(str, "a data set name"), "data.name", data["name"])
    _rule(one_of(DATA_KINDS), "data.kind", data["kind"])
    # (C, L) signals, (C, H, W) images, (C, D, H, W) volumes
    _rule(sequence_of(integer(1, 2**31 - 1), at_least=2, at_most=4), "data.shape", data["shape"])
    _rule(integer(1, 2**31 - 1), "data.classes", data["classes"])
    _need(isinstance(data["class_names"], list) and len(data["class_names"]) == data["classes"]
          and all(isinstance(n, str) for n in data["class_names"]), "data.class_names",
          f"a list of {data['classes']} names", data["class_names"])
    _rule(real(0, above=True), "data.pixel_max", data["pixel_max"])
    channels = data["shape"][0]
    _rule(sequence_of(real(), length=channels), "data.mean", data["mean"])
    _rule(sequence_of(real(0, above=True), length=channels), "data.std", data["std"])


def _tabular_data(record: dict) -> None:
    """A tabular data set's record: its pipeline (`tabular.Pipeline.record`) is applied by `eval`
    and written next to exported models, so every statistic must be usable as it stands."""
    data = _entries(record, "data", ("name", "kind", "shape", "classes", "class_names", "task", "pipeline"),
                    ("baseline",))
    _baseline(data)
    _rule(instance(str, "a data set name"), "data.name", data["name"])
    _rule(one_of(("regression", "classification")), "data.task", data["task"])
    _rule(sequence_of(integer(1, 2**31 - 1), length=1), "data.shape", data["shape"])
    _rule(integer(1, 2**31 - 1), "data.classes", data["classes"])
    _need(isinstance(data["class_names"], list) and len(data["class_names"]) == data["classes"]
          and all(isinstance(n, str) for n in data["class_names"]), "data.class_names",
          f"a list of {data['classes']} names", data["class_names"])
    p = _entries(data["pipeline"], "data.pipeline", ("target", "task", "target_mean", "target_std",
                                                     "target_floor", "classes", "columns"))
    _rule(instance(str, "a column name"), "data.pipeline.target", p["target"])
    _need(p["task"] == data["task"], "data.pipeline.task", repr(data["task"]), p["task"])
    _rule(real(), "data.pipeline.target_mean", p["target_mean"])
    _rule(real(0, above=True), "data.pipeline.target_std", p["target_std"])
    _rule(optional(real(0, above=True)), "data.pipeline.target_floor", p["target_floor"])
    _unique_names(p["classes"], "data.pipeline.classes")
    if data["task"] == "regression":
        _need(data["classes"] == 1 and not p["classes"], "data.classes", "1 (one regression target)", data["classes"])
    else:
        _need(p["classes"] == data["class_names"], "data.pipeline.classes", "data.class_names", p["classes"])
    columns = p["columns"]
    _need(isinstance(columns, list) and len(columns) <= 10**6, "data.pipeline.columns", "a list", columns)
    width = 0
    for i, column in enumerate(columns):
        where = f"data.pipeline.columns[{i}]"
        _entries(column, where, ("name", "kind", "mean", "std", "categories"))
        _rule(instance(str, "a column name"), f"{where}.name", column["name"])
        _rule(one_of(("numeric", "categorical")), f"{where}.kind", column["kind"])
        _rule(real(), f"{where}.mean", column["mean"])
        _rule(real(0, above=True), f"{where}.std", column["std"])
        _unique_names(column["categories"], f"{where}.categories")
        width += 1 if column["kind"] == "numeric" else len(column["categories"]) + 1
    _unique_names([c["name"] for c in columns], "data.pipeline.columns (names)")
    _need(data["shape"] == [width], "data.shape", f"[{width}] (the pipeline's encoded width)", data["shape"])
    for problem in record_problems(data["pipeline"])[:1]:  # beyond the shapes: e.g. the target as a feature
        raise _Invalid(f"'data.pipeline': {problem}")


def _baseline(data: dict) -> None:
    """train's baseline on the test split (training/baseline.py): its name and its scores."""
    if "baseline" not in data:
        return
    record = data["baseline"]
    _need(isinstance(record, dict) and isinstance(record.get("baseline"), str), "data.baseline",
          "a dict naming its baseline", record)
    for key, value in record.items():
        _need(isinstance(key, str) and (isinstance(value, str) or _is_real(value) or value is None),
              f"data.baseline.{key}", "a name or a number", value)


def _unique_names(names: Any, where: str) -> None:
    _need(isinstance(names, list) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names),
          where, "a list of distinct strings", names)
