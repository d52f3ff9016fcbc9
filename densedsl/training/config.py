"""A run's settings and the rules they follow: the paper's recipe as defaults, every value checked
before any work, and what a resumed run must share with its checkpoint.

Defaults are the DenseNet paper's CIFAR recipe (Huang et al. 2017, §4.2): SGD with Nesterov
momentum 0.9, weight decay 1e-4, batch 64, learning rate 0.1 divided by 10 at 50% and 75% of the
epochs, random crop with 4-pixel zero padding and horizontal flip where the data calls for it,
per-channel normalisation. Every setting is reported, with where it came from, before training
starts (`report`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..core import diagnostics as d
from ..core.diagnostics import Diagnostic, SpecError
from ..language.network import Network
from . import checkpoint_schema, datasets
from .checkpoints import CHECKPOINT
from .distributed import Dist

AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")

# The paper's recipe (§4.2); `epochs` and `augment` depend on the data (datasets.describe).
# The fine-tuning settings default to what the paper did: SGD, step schedule, nothing frozen.
RECIPE = {"batch_size": 64, "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4,
          "milestones": (0.5, 0.75), "gamma": 0.1, "seed": 0, "optimizer": "sgd", "schedule": "step",
          "warmup": 0, "label_smoothing": 0.0, "grad_clip": None, "freeze": (), "head_lr": None,
          "target": None,  # csv: data's column to predict (--target)
          "val_split": None, "keep": "last", "patience": None,  # model selection (training/selection.py)
          "normalize": "auto", "freeze_bn": False,
          "drop": ()}  # tabular data: columns left out of the features (--drop)  # fine-tuning (training/normalize.py, loop.hold_norms)
# Settings a resumed run must share with its checkpoint: they decide what the weights become.
# (`epochs` may grow: see `resolve`.)
RESUME_FIXED = ("data", "epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay",
                "milestones", "gamma", "augment", "seed", "optimizer", "schedule", "warmup",
                "label_smoothing", "grad_clip", "freeze", "head_lr", "target", "val_split", "keep", "patience",
                "normalize", "freeze_bn", "drop")

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Every setting of a run, after defaults; stored in the checkpoint."""

    data: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    milestones: tuple[float, ...]
    gamma: float
    augment: str
    seed: int
    device: str
    amp: str
    memory: str
    workers: int
    sync_bn: bool
    max_steps: int | None
    init: str | None = None          # the weights file the run started from (train --init)
    optimizer: str = "sgd"           # OPTIMIZERS; adamw ignores momentum and nesterov
    schedule: str = "step"           # SCHEDULES: step (milestones, gamma) or cosine (to 0)
    warmup: int = 0                  # cosine: epochs of linear warm-up before the decay
    label_smoothing: float = 0.0     # of the training loss (the test loss is plain cross-entropy)
    grad_clip: float | None = None   # largest gradient norm, all trained parameters together
    freeze: tuple[str, ...] = ()     # stages not trained: "features", "stem" or features.NAME
    head_lr: float | None = None     # the classifier's learning rate (None: lr)
    target: str | None = None        # csv: data: the column to predict
    val_split: float | None = None   # the fraction of the training split held out for validation
    keep: str = "last"               # selection.KEEP: the weights a run ends with
    patience: int | None = None      # stop after this many epochs without a better validation score
    normalize: str = "auto"          # normalize.NAMED or MEAN,STD: which statistics normalise the input
    normalize_why: str = ""          # whose statistics they are (ImageNet's, the initial weights', the data's)
    freeze_bn: bool = False          # every batch norm's running statistics fixed (frozen stages' always are)
    drop: tuple[str, ...] = ()       # tabular data: columns left out of the features
    threads: int = 0                 # torch's CPU intra-op threads (recorded; may change on resume)
    threads_why: str = ""            # who chose them (--threads, auto from the load) and the OpenMP wait

    def milestone_epochs(self) -> list[int]:
        return sorted({max(1, round(f * self.epochs)) for f in self.milestones})



# --- checks before training ------------------------------------------------------------------

def check_data(network: Network, desc: datasets.Description) -> list[Diagnostic]:
    """The spec's input shape and classes against the data set's, before anything is read."""
    if desc.tabular:  # feature vectors: the encoded width is checked once the file is read
        from .tabular import check_spec
        return check_spec(network, desc)
    problems: list[Diagnostic] = []
    shape = "x".join(map(str, network.input))
    if desc.shape is not None and tuple(network.input) != tuple(desc.shape):
        want = "x".join(map(str, desc.shape))
        problems.append(Diagnostic(
            d.DATA_MISMATCH, f"the spec's input is {shape} but {desc.kind} images are {want}",
            network.input_span, f"write `input {want}` in the spec (densedsl does not resize "
            f"{desc.kind}), or train on data of {shape} images",
            file=None if network.input_span else "--data"))
    if desc.kind == "folder" and network.input[0] not in (1, 3):
        problems.append(Diagnostic(
            d.DATA_MISMATCH, f"the spec's input has {network.input[0]} channels; folder images are "
            "read as grayscale (1 channel) or RGB (3)", network.input_span, "use input 1xHxW or 3xHxW",
            file=None if network.input_span else "--data"))
    if network.head is None:
        problems.append(Diagnostic(
            d.DATA_MISMATCH, "the network has no head, so it cannot be trained as a classifier",
            network.span, f"add `head classes={desc.classes or 10}`",
            file=None if network.span else "--data"))
    elif desc.classes is not None and network.head.classes != desc.classes:
        params = dict(network.parameters)
        name = "classes" if "classes" in params else None
        fix = (f"--set {name}={desc.classes}" if name else f"write `head classes={desc.classes}` in the spec")
        problems.append(Diagnostic(
            d.DATA_MISMATCH, f"the spec's head has {network.head.classes} classes but {desc.kind} has "
            f"{desc.classes}", network.head.span, f"{fix}",
            file=None if network.head.span else "--data"))
    return problems


# The optimizer steps in float32: a setting finite as a Python float (1e308) overflows there and
# the step fails. Rates and decay also get a cap far above any recipe (the paper: lr 0.1, weight
# decay 1e-4), under which lr · weight decay · a weight stays far inside float32's range.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
SETTING_CAPS = {"lr": 1e4, "head_lr": 1e4, "weight_decay": 1e4}
FLOAT32_SETTINGS = ("momentum", "gamma", "grad_clip")
# DataLoader workers are processes: more than a few per CPU only adds memory and start-up time.
WORKERS_PER_CPU = 4
MAX_WORKERS = 64


def max_workers() -> int:
    """The most DataLoader workers a run may start: 4 per CPU this process may use, at most 64."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, WORKERS_PER_CPU * cpus))


def _range_problems(values: dict) -> list[tuple[str, str]]:
    """Values the checkpoint rules accept but float32 arithmetic or the machine cannot take."""
    problems = []
    for key, cap in SETTING_CAPS.items():
        value = values.get(key)
        if not _is_number(value):
            continue
        assert value is not None
        if math.isfinite(value) and value > cap:
            problems.append((key, f"must be at most {cap:g} (far above any recipe; larger values overflow "
                                  f"float32 in the optimizer step), not {value:g}"))
    for key in FLOAT32_SETTINGS:
        value = values.get(key)
        if not _is_number(value):
            continue
        assert value is not None
        if math.isfinite(value) and abs(value) > FLOAT32_MAX:
            problems.append((key, f"must be within float32's range (at most {FLOAT32_MAX:.4g}), not {value:g}"))
    workers = values.get("workers")
    if _is_number(workers) and workers is not None and workers > max_workers():
        problems.append(("workers", f"must be at most {max_workers()} ({WORKERS_PER_CPU} per CPU this "
                                    f"process may use, at most {MAX_WORKERS}): each worker is a process, "
                                    f"not {workers}"))
    return problems


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_settings(values: dict, threads: int | None) -> None:
    """Every training setting against the rules a checkpoint is held to (E105), before any work:
    a NaN learning rate, say, would otherwise take one step and save NaN weights; then against
    float32's range and the worker cap (`_range_problems`)."""
    problems = checkpoint_schema.setting_problems(values)
    flagged = {key for key, _ in problems}
    problems += [(key, why) for key, why in _range_problems(values) if key not in flagged]
    want = checkpoint_schema.integer(1, 4096)(threads) if threads is not None else None
    if want is not None:
        problems.append(("threads", f"must be {want}, not {threads!r}"))
    if problems:
        raise SpecError([Diagnostic(d.OUT_OF_RANGE, f"{key.replace('_', ' ')} {problem}", None,
                                    file="--" + key.replace("_", "-")) for key, problem in problems])


def check_batch_of_one(net: Network) -> None:
    """Batches of one image fail in batch norm on a 1x1 map (the analysis' W206): refuse them
    before training rather than crash at the first step. (A last batch of one is dropped.)"""
    from ..analysis.figures import analyze
    warning = next((w for w in analyze(net).diagnostics if w.code == d.TRAIN_TOO_SMALL), None)
    if warning is not None:
        raise SpecError([Diagnostic(d.OUT_OF_RANGE, f"batch size must be at least 2 for {net.name}: "
                                    f"{warning.message}", None, warning.hint, file="--batch-size")])


def check_enough_data(data: datasets.Data, batch_size: int, dd: Dist) -> None:
    """A split must hold images, and an epoch at least one batch (E208): otherwise a run
    "trains" zero steps and saves a checkpoint of its initial weights with a loss of 0."""
    per_process = math.ceil(len(data.train) / dd.world)
    unit = "row" if data.tabular else "image"
    if per_process == 1 and batch_size > 1:  # the batch of one is dropped (see the loop): no steps
        raise SpecError([Diagnostic(
            d.NO_DATA, f"{data.name} has {len(data.train)} training {unit}{'s' if len(data.train) != 1 else ''}"
            + (f" for {dd.world} processes" if dd.active else "") + f": one {unit} per batch cannot be trained "
            "on (batch norm needs two)", None, "train on a data set with more images", file="--data")])


def pick_device(requested: str, dd: Dist) -> torch.device:
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise SpecError([Diagnostic(d.NO_DEVICE, "--device cuda, but no CUDA device is available "
                                    f"(torch {torch.__version__})", None,
                                    "use --device cpu, or install a CUDA build of PyTorch", file="--device")])
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dd.local_rank)


def pick_amp(requested: str, device: torch.device) -> str:
    if requested not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, not {requested!r}")
    if requested == "auto":
        if device.type != "cuda":
            return "off"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16" and device.type != "cuda":
        raise SpecError([Diagnostic(d.NO_DEVICE, "--amp fp16 needs a CUDA device", None,
                                    "use --amp bf16 or --amp off on the CPU", file="--amp")])
    return requested


# --- resuming ------------------------------------------------------------------------------------

def resolve(desc: datasets.Description, recipe: dict, ckpt: dict | None, run_dir: Path | None
            ) -> tuple[dict[str, Any], dict[str, str]]:
    """(value, origin) of every recipe setting: explicit, else the checkpoint's, else the recipe /
    the data set's default. On resume, an explicit value that differs from the checkpoint's is
    E116: it would change what the weights become. The one exception is a larger `epochs`, which
    extends the run (`extension`)."""
    given = {"data": desc.name, **recipe}
    # A checkpoint written before a setting existed was trained with its default.
    saved = {**checkpoint_schema.LATER_SETTINGS, **ckpt["config"]} if ckpt else {}
    defaults = {**RECIPE, **dict(desc.defaults), "epochs": desc.epochs, "augment": desc.augment}
    values, origin = {}, {}
    for key, default in defaults.items():
        if given.get(key) is not None:
            values[key], origin[key] = given[key], "set"
        elif key in saved:
            values[key], origin[key] = saved[key], "checkpoint"
        else:
            values[key], origin[key] = default, "default"
    values["milestones"] = tuple(values["milestones"])
    values["freeze"] = tuple(values["freeze"])
    values["drop"] = tuple(values["drop"])
    if values["augment"] == "standard":  # the data set's own: crop+flip for CIFAR, and so on
        values["augment"] = desc.augment
    if origin["nesterov"] == "default" and values["momentum"] == 0:
        values["nesterov"] = False  # --momentum 0 asks for plain SGD: Nesterov needs momentum
    if ckpt:
        def differs(k: str) -> bool:
            if k == "epochs" and int(values[k]) > int(saved[k]):
                return False  # extending the run: see extension()
            if k == "data":  # older checkpoints hold the path as given, relative or not
                return absolute_data(desc.name) != absolute_data(saved[k])
            return _norm(values[k]) != _norm(saved[k])
        clashes = [f"{k} {_shown(given[k]) if k != 'data' else desc.name} (checkpoint: {_shown(saved[k])})"
                   for k in RESUME_FIXED if k in saved and differs(k)]
        if clashes:
            raise SpecError([Diagnostic(d.CONFLICT, "--resume with settings that differ from the "
                                        "checkpoint's: " + "; ".join(clashes), None,
                                        "leave them out to continue the run as it was (only a larger "
                                        "--epochs extends it), or start a new run with another --out",
                                        file=str(run_dir / CHECKPOINT) if run_dir is not None else None)])
    return values, origin


def absolute_data(name: str) -> str:
    """A `--data` value with its directory made absolute, as checkpoints store it: `eval` of the
    checkpoint then finds the data from any directory."""
    kind, sep, rest = name.partition(":")
    if not sep or not rest or kind.strip().lower() in ("digits", "synthetic"):
        return name
    if kind.strip().lower() == "csv":  # csv:TRAIN,TEST: both files
        from .datasets import describe
        desc = describe(name)
        return "csv:" + ",".join(str(p.absolute()) for p in (desc.path, desc.test_path) if p is not None)
    return f"{kind}:{Path(rest).expanduser().absolute()}"


def _shown(value: Any) -> str:
    """A setting as the command line spells it."""
    if value is None:
        return "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "none"
    return str(value)


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_same_spec(ckpt: dict, record: dict | None, run_dir: Path) -> None:
    saved = ckpt.get("spec")
    if record is None or saved is None:
        return
    same = (saved["text"] == record["text"] and saved["network"] == record["network"]
            and dict((k, str(v)) for k, v in saved["overrides"]) == dict((k, str(v)) for k, v in record["overrides"]))
    if not same:
        raise SpecError([Diagnostic(d.CONFLICT, f"--resume with a different spec, network or --set "
                                    f"values than the checkpoint's ({saved['source']}, network "
                                    f"{saved['network']})", None, "resume with the same spec and "
                                    "parameters, or start a new run with another --out",
                                    file=str(run_dir / CHECKPOINT))])


# --- the report ----------------------------------------------------------------------------------

def report(say: Log, net: Network, record: dict | None, data: datasets.Data, config: Config,
            origin: dict, dd: Dist, run_dir: Path | None, ckpt: dict | None) -> None:
    """Every setting, and where it came from, before the first step."""
    def why(key: str, default_reason: str) -> str:
        if key in dict(data.description.defaults):  # the data set's own recipe (tabular data)
            default_reason = data.description.epochs_why
        return {"set": "", "checkpoint": "  (from the checkpoint)"}.get(origin[key], f"  ({default_reason})")

    source = f" ({record['source']})" if record else ""
    shape = "x".join(map(str, data.shape))
    if data.tabular:
        task = "a regression" if data.task == "regression" else f"{data.classes} classes"
        say(f"training {net.name}{source} on {data.name}: {len(data.train)} training and "
            f"{len(data.test)} test rows of {shape} features, {task}")
    else:
        say(f"training {net.name}{source} on {data.name}: {len(data.train)} training and "
            f"{len(data.test)} test images of {shape}, {data.classes} classes")
    milestones = ", ".join(str(m) for m in config.milestone_epochs())
    fmt = lambda v: ", ".join(f"{x:.4f}" for x in v)  # noqa: E731
    rows = [
        ("epochs", str(config.epochs), why("epochs", data.description.epochs_why)
         + (f"  (extends the checkpoint's {ckpt['config']['epochs']})"
            if ckpt and config.epochs > int(ckpt["config"]["epochs"]) else "")),
        ("batch size", str(config.batch_size) + (f" per process ({config.batch_size * dd.world} in all)"
                                                 if dd.active else ""), why("batch_size", "paper")),
        ("learning rate", f"{config.lr:g}", why("lr", "paper")),
        ("schedule", f"×{config.gamma:g} after epochs {milestones} "
                     f"({', '.join(f'{100 * m:g}%' for m in config.milestones)} of the epochs)",
         why("milestones", "paper") if origin["milestones"] != "set" else why("gamma", "paper"))
        if config.schedule == "step" else
        ("schedule", "cosine to 0" + (f" after {config.warmup} warm-up epoch{'s' if config.warmup > 1 else ''}"
                                      if config.warmup else ""), why("schedule", "default")),
        ("optimizer", f"SGD, {'Nesterov ' if config.nesterov else ''}momentum {config.momentum:g}, "
                      f"weight decay {config.weight_decay:g}",
         "  (paper)" if all(origin[k] == "default" for k in ("momentum", "nesterov", "weight_decay")) else "")
        if config.optimizer == "sgd" else
        ("optimizer", f"AdamW, weight decay {config.weight_decay:g}", why("optimizer", "default")),
        *([("head learning rate", f"{config.head_lr:g}", "  (classifier)")] if config.head_lr is not None else []),
        *([("frozen", ", ".join(config.freeze), "  (not trained)")] if config.freeze else []),
        *([("batch norm", "running statistics fixed" + ("" if config.freeze_bn else " in the frozen stages"),
            "  (--freeze-bn)" if config.freeze_bn else "")] if config.freeze or config.freeze_bn else []),
        *([("label smoothing", f"{config.label_smoothing:g}", "")] if config.label_smoothing else []),
        *([("gradient clipping", f"total norm {config.grad_clip:g}", "")] if config.grad_clip is not None else []),
        *(_tabular_rows(data) if data.tabular else [
            ("augmentation", config.augment, why("augment", f"default for {data.description.kind}")),
            ("normalisation", f"mean ({fmt(data.mean)}), std ({fmt(data.std)})",
             f"  ({config.normalize_why or 'of the training images'})")]),
        *([("resize", data.resized, "  (folder images to the spec's input)")] if data.resized else []),
        ("seed", str(config.seed), why("seed", "default")),
        *([("initial weights", config.init, "")] if config.init is not None else []),
        ("device", config.device + (f" ×{dd.world} processes" if dd.active else ""), ""),
        ("precision", "float32" if config.amp == "off" else f"autocast {config.amp}", ""),
        ("memory", config.memory, ""),
        ("workers", str(config.workers), ""),
        ("threads", str(torch.get_num_threads()),
         f"  (CPU intra-op; {config.threads_why})" if config.device == "cpu" else ""),
    ]
    if config.sync_bn:
        rows.append(("batch norm", "synchronised across processes", ""))
    if config.max_steps is not None:
        rows.append(("max steps", str(config.max_steps), "  (smoke test)"))
    if data.baseline is not None:
        from .baseline import describe
        rows.append(("baseline", describe(data.baseline), ""))
    if data.val is not None:
        where = (f"held out of the training split (--val-split {config.val_split:g})" if config.val_split
                 else "of the val/ folder")
        rows.append(("validation", f"{len(data.val)} examples {where}; the test split is scored once, at the end", ""))
        rows.append(("kept weights", f"{config.keep} epoch" + (f", early stop after {config.patience} epochs "
                     "without a better validation score" if config.patience else ""), ""))
    rows.append(("run directory", str(run_dir) if run_dir is not None else "none (nothing is saved)", ""))
    width = max(len(name) for name, _, _ in rows)
    for name, value, note in rows:
        say(f"  {name:<{width}}  {value}{note}")
    for warning in data.warnings:
        say(f"warning: {warning}")


def _tabular_rows(data: datasets.Data) -> list[tuple[str, str, str]]:
    from .tabular import describe_lines
    return describe_lines(data)
