"""Training and evaluating compiled specs: the paper's recipe, checkpoints that resume exactly,
and the same code under `torchrun` (DistributedDataParallel).

    result = densedsl.training.train.train("specs/tiny_digits.dense", data="digits", epochs=30, out="runs/td")
    print(result.test_accuracy)

This module wires the parts together; each job lives in its own module:

- `train_config`: the settings, their defaults (the paper's recipe), their checks, the rules a
  resumed run follows, and the report printed before training;
- `checkpoints`: the checkpoint format (written with CRCs, read only after every entry checks out);
- `train_loop`: epochs, evaluation, divergence checks, reproducible data order and augmentation;
- `rundir`: the run directory, its lock (E910) and the default name of a new one;
- `distributed`: the `torchrun` process group.
"""

from __future__ import annotations

import ctypes
import os
import platform
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, cast

import torch
import torch.distributed as dist
from torch import nn

from ..core import diagnostics as d
from ..core.diagnostics import Diagnostic, SpecError
from ..core.files import atomic_write
from ..language.network import Network
from . import baseline, checkpoints, datasets, selection, tabular
from . import normalize as normalization
from .checkpoints import CHECKPOINT, model_from_checkpoint, spec_from_record
from .checkpoints import read as read_checkpoint
from .config import (
    AMP_MODES,
    DEVICES,
    RECIPE,
    Config,
    Log,
    check_batch_of_one,
    check_data,
    check_enough_data,
    check_same_spec,
    check_settings,
    pick_amp,
    pick_device,
    report,
    resolve,
)
from .distributed import Dist, setup
from .loop import (
    Run,
    cuda_channels_last,
    derived_seed,
    evaluate_regression,
    evaluate_split,
    fit,
    optimizer_for,
    replayed,
    scheduler_for,
    set_rng_state,
)
from .rundir import CURVES, LOCK, METRICS, RunLock, default_run_dir, existing_run, run_directory

__all__ = ["AMP_MODES", "CHECKPOINT", "CURVES", "DEVICES", "LOCK", "METRICS", "RECIPE", "Config",
           "EvalResult", "RunLock", "RunResult", "check_data", "default_run_dir", "evaluate",
           "model_from_checkpoint", "read_checkpoint", "spec_from_record", "train"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    network: str
    data: str
    config: Config
    metrics: tuple[dict[str, float], ...]   # one row per epoch (METRIC_FIELDS)
    model: nn.Module                        # the trained model, unwrapped, in eval mode
    run_dir: Path | None
    checkpoint: Path | None                 # the last checkpoint written, if any
    seconds: float                          # wall time of this call
    stopped: str | None = None              # "max-steps", "callback" or "patience" when it ended early
    test: dict | None = None                # with a validation split: the test split's one score (result.json)

    @property
    def test_accuracy(self) -> float:
        last = self.test or (self.metrics[-1] if self.metrics else {})
        return last.get("test_acc", float("nan"))

    @property
    def test_rmse(self) -> float:
        """A regression's test RMSE in the target's units (NaN for a classifier)."""
        last = self.test or (self.metrics[-1] if self.metrics else {})
        return last.get("test_rmse", float("nan"))

    @property
    def epochs(self) -> int:
        return int(self.metrics[-1]["epoch"]) if self.metrics else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalResult:
    loss: float
    accuracy: float
    correct: int
    total: int
    network: str
    data: str
    epoch: int | None = None
    rmse: float | None = None        # a regression: RMSE in the target's units (loss: standardised MSE)
    log_rmse: float | None = None    # and of the logs, when every target is positive



def _resolve_spec(spec: Any, network: str | None, params: dict[str, Any]) -> tuple[Network, dict | None]:
    """(the network, the record that rebuilds it from a checkpoint) for a Spec, path, text or Network."""
    if isinstance(spec, Network):
        if network is not None or params:
            raise TypeError("network= and parameters apply to spec text or files, not to a Network")
        return spec, None
    from ..language.spec import as_spec
    s = as_spec(spec, network=network, **params)
    return s.network, checkpoints.spec_record(s)


def train(spec: Any, data: str = "digits", *, epochs: int | None = None, batch_size: int | None = None,
          lr: float | None = None, momentum: float | None = None, nesterov: bool | None = None,
          weight_decay: float | None = None, milestones: tuple[float, ...] | None = None,
          gamma: float | None = None, augment: str | None = None, seed: int | None = None,
          device: str = "auto", amp: str = "auto", memory: str = "standard",
          release_memory: bool = False, workers: int | None = None,
          threads: int | Literal["auto"] | None = None, sync_bn: bool = False,
          max_steps: int | None = None, out: str | os.PathLike | None = None, resume: bool = False,
          log: Log | None = None, progress: bool = True, callback: Callable[[dict], bool | None] | None = None,
          init: str | os.PathLike | None = None, init_partial: bool = False,
          optimizer: str | None = None, schedule: str | None = None, warmup: int | None = None,
          label_smoothing: float | None = None, grad_clip: float | None = None,
          freeze: tuple[str, ...] | None = None, head_lr: float | None = None,
          target: str | None = None, val_split: float | None = None, keep: str | None = None,
          patience: int | None = None, normalize: str | None = None, freeze_bn: bool | None = None,
          drop: tuple[str, ...] | None = None,
          network: str | None = None, **params: Any) -> RunResult:
    """Train a spec (a `Spec`, a path, spec text or a resolved `Network`) on a data set.

    Settings left at None take the paper's recipe (`RECIPE`) or the data set's default (epochs,
    augmentation: "none", "flip", "crop", "crop+flip" or "resized-crop+flip"; "standard" is the data
    set's default); on `resume` they take the checkpoint's,
    and one that differs from the checkpoint's is an error (it would change what the weights
    become). `milestones` are fractions of `epochs` where the learning rate is multiplied by
    `gamma`. `max_steps` ends the run after that many optimizer steps (a smoke test: the partial
    epoch is evaluated but not checkpointed). `threads` sets torch's CPU threads; None keeps the
    process's setting, "auto" is the CLI's default: torch's less the cores other processes keep
    busy (`densedsl.training.threads.pick`, docs/training.md). `release_memory` (CPU, glibc) has freed memory
    returned to the system at once, so the peak follows live tensors, at a cost in speed
    (`return_freed_memory`). `log` receives the report lines
    (None: silent); `progress` adds a per-epoch bar when stdout is a terminal. `callback(row)` runs after every
    epoch with its metrics row; returning True stops training (early stopping). Under torchrun
    the processes train one DistributedDataParallel model; only rank 0 logs and writes.

    `init` starts from the weights of a file (`transfer.initialise`): a densedsl checkpoint, a
    state_dict or a torchvision/timm/MONAI/pytorchcv checkpoint. Tensors whose shape differs (the
    classifier, when the classes differ) stay at their initialisation; tensors the model or the
    file lacks are an error unless `init_partial`. The log names every tensor not taken.

    Fine-tuning: `optimizer` "sgd" (default) or "adamw"; `schedule` "step" (default: the
    milestones) or "cosine" (with `warmup` epochs); `label_smoothing`; `grad_clip` (the largest
    gradient norm); `freeze` (stage names: "features", "stem" or a module of `features`, whose
    parameters are not trained); `head_lr` (the classifier's learning rate). On `resume`, a larger
    `epochs` extends the run, and the log says whether the result is exactly that of a run of
    that length (`_extension`).

    Tabular data (`csv:FILE` with `target`, the column to predict, or `diabetes`) is encoded by
    `densedsl.training.tabular`; the spec's head decides between regression (MSE; RMSE reported) and
    classification.

    Model selection (`selection`): `val_split` holds out that fraction of the training split for
    validation; each epoch is then scored on it (`val_*` in its row) and the test split is scored
    once at the end, with the weights `keep` names ("last", the default, or "best": the best
    validation epoch's, also kept as RUN_DIR/best.pt); `patience` stops after that many epochs
    without a better validation score.
    """
    started = time.perf_counter()
    net, record = _resolve_spec(spec, network, params)
    desc = datasets.for_input(datasets.describe(data), net.input)
    if desc.path is not None:  # stored absolute: `eval` of the checkpoint works from anywhere
        desc = replace(desc, path=desc.path.absolute(),
                       test_path=desc.test_path.absolute() if desc.test_path is not None else None)
    if target is not None and desc.kind != "csv":
        raise SpecError([Diagnostic(d.CONFLICT, f"--target names a column of csv: data; {desc.kind} "
                                    "has its own target", None, "leave out --target", file="--target")])
    d.raise_if_errors(check_data(net, desc))

    dd = setup("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    recipe = dict(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, nesterov=nesterov,
                  weight_decay=weight_decay, gamma=gamma, augment=augment, seed=seed,
                  milestones=tuple(milestones) if milestones is not None else None,
                  optimizer=optimizer, schedule=schedule, warmup=warmup, label_smoothing=label_smoothing,
                  grad_clip=grad_clip, freeze=tuple(freeze) if freeze is not None else None, head_lr=head_lr,
                  target=target, val_split=val_split, keep=keep, patience=patience, normalize=normalize,
                  freeze_bn=freeze_bn, drop=tuple(drop) if drop is not None else None)
    try:
        with run_directory(out, dd, pick_device(device, dd)):
            return _run(net, record, desc, dd, started, recipe=recipe, device=device, amp=amp,
                        memory=memory, release_memory=release_memory, workers=workers,
                        threads=threads, sync_bn=sync_bn,
                        max_steps=max_steps, out=out, resume=resume, log=log if dd.main else None,
                        progress=progress, callback=callback, init=init, init_partial=init_partial)
    finally:
        if dd.created:
            dist.destroy_process_group()


def _set_threads(threads: int | Literal["auto"] | None) -> str:
    """Apply `threads` (a count, "auto" or None: the process's own) and say who chose it."""
    from . import threads as cpu
    if threads == "auto" and cpu.THREADS_VARIABLE not in os.environ:  # OMP_NUM_THREADS is a choice too
        load = cpu.busy_cpus()
        torch.set_num_threads(cpu.pick(torch.get_num_threads(), cpu.usable_cpus(), load))
        why = "torch's default" if load is None else f"auto: {cpu.usable_cpus()} CPUs, load {load:.1f}"
    elif threads == "auto":
        why = cpu.THREADS_VARIABLE
    elif threads is not None:
        torch.set_num_threads(threads)
        why = "--threads"
    else:
        why = "the process's"
    return f"{why}; OpenMP wait {os.environ.get(cpu.WAIT_POLICY, 'unset').lower()}"


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def return_freed_memory() -> bool:
    """glibc only, for `--release-memory` on CPU: serve blocks of 64 KiB or more from mmap and
    trim the heap on every free, so the process's peak memory follows its live tensors (what the
    analysis predicts). glibc's default threshold adapts upwards as large blocks are freed, after
    which freed activations stay in the heap and the peak grows (measured in BENCHMARKS.md,
    `training` section). Process-wide and for the rest of the process; left alone where the user
    set MALLOC_MMAP_THRESHOLD_ or the C library is not glibc. True when applied. Its price: every
    large tensor then comes as fresh zeroed pages (about 6× the page faults of a DenseNet-121 step
    under the default allocator, and slower steps: BENCHMARKS.md), so it is never applied on behalf
    of a user's own loop, nor by `densedsl train` unless asked (`--release-memory`)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, 64 * 1024) == 1 and mallopt(_M_TRIM_THRESHOLD, 0) == 1


def _run(net: Network, record: dict | None, desc: datasets.Description, dd: Dist, started: float, *,
         recipe: dict, device: str, amp: str, memory: str, release_memory: bool, workers: int | None,
         threads: int | Literal["auto"] | None,
         sync_bn: bool,
         max_steps: int | None, out, resume: bool, log: Log | None, progress: bool,
         callback, init, init_partial: bool) -> RunResult:
    # every line may quote the user's strings (file names, CSV class values and columns)
    say: Log = (lambda line: log(d.printable_line(line))) if log is not None else (lambda line: None)
    run_dir = Path(out) if out is not None else None
    ckpt = None
    if resume:
        if run_dir is None:
            raise ValueError("resume=True needs out= (the run directory to continue)")
        if not (run_dir / CHECKPOINT).is_file():
            raise SpecError([Diagnostic(d.FILE_NOT_FOUND, f"no checkpoint to resume in {run_dir}", None,
                                        "run without --resume to start training there",
                                        file=str(run_dir / CHECKPOINT))])
        if init is not None:
            raise SpecError([Diagnostic(d.CONFLICT, "--init with --resume: a resumed run continues from "
                                        "its checkpoint's weights", None, "leave out --init to continue "
                                        "the run, or start a new run with another --out",
                                        file="--init")])
        ckpt = read_checkpoint(run_dir / CHECKPOINT)
        check_same_spec(ckpt, record, run_dir)
    elif run_dir is not None and (found := existing_run(run_dir)) is not None:
        raise SpecError([Diagnostic(
            d.RUN_EXISTS, f"the run directory already holds a run ({found})", None,
            ("pass --resume to continue that run, " if found == CHECKPOINT else "")
            + "choose another --out, or omit --out to let train pick a fresh directory", file=str(run_dir))])

    values, origin = resolve(desc, recipe, ckpt, run_dir)
    check_settings({**values, "memory": memory, "workers": workers if workers is not None else 0,
                    "max_steps": max_steps}, threads if threads != "auto" else None)
    if int(values["batch_size"]) == 1:
        check_batch_of_one(net)
    if "crop" in values["augment"] and len(net.input) != 3:  # crops are of H x W; flips work on any rank
        raise SpecError([Diagnostic(d.CONFLICT, f"--augment {values['augment']} crops images; the spec's input "
                                    f"is {'x'.join(map(str, net.input))}", None, "use --augment flip or none",
                                    file="--augment")])

    dev = pick_device(device, dd)
    amp = pick_amp(amp, dev)
    if release_memory and dev.type == "cpu":  # opt-in: it costs speed (return_freed_memory)
        return_freed_memory()
    from ..analysis.budget import check_training  # E307 before the data set or the model is allocated
    check_training(net, batch=int(values["batch_size"]), mode=memory, device=dev, optimizer=values["optimizer"])
    threads_why = _set_threads(threads)
    if sync_bn and not dd.active:
        sync_bn = False  # one process: nothing to synchronise
    if desc.kind == "csv":  # --target, or the checkpoint's on resume
        desc = replace(desc, target=values["target"])
    if values["drop"]:
        if not desc.tabular:
            raise SpecError([Diagnostic(d.CONFLICT, f"--drop names columns of a table; {desc.kind} data has none",
                                        None, "leave out --drop", file="--drop")])
        desc = replace(desc, drop=tuple(values["drop"]))
    assert net.head is not None  # config.check_data refused a network without one
    data = datasets.load(desc, shape=net.input, classes=net.head.classes,
                         task=tabular.task_of(net))
    if data.tabular:  # the encoded width (E207) before the model is built
        d.raise_if_errors(tabular.check_data(net, data) + tabular.recipe_problems(data, values))
    check_enough_data(data, int(values["batch_size"]), dd)
    data, normalize_why = _normalised(data, values["normalize"], ckpt, init)
    workers = workers if workers is not None else (min(4, os.cpu_count() or 1)
                                                   if desc.kind == "folder" and dev.type == "cuda" else 0)
    config = Config(data=desc.name, epochs=int(values["epochs"]), batch_size=int(values["batch_size"]),
                    lr=float(values["lr"]), momentum=float(values["momentum"]),
                    nesterov=bool(values["nesterov"]), weight_decay=float(values["weight_decay"]),
                    milestones=tuple(float(m) for m in values["milestones"]), gamma=float(values["gamma"]),
                    augment=values["augment"], seed=int(values["seed"]), device=str(dev), amp=amp,
                    memory=memory, workers=workers, sync_bn=sync_bn, max_steps=max_steps,
                    init=ckpt["config"].get("init") if ckpt else (
                        str(Path(init).absolute()) if init is not None else None),
                    optimizer=values["optimizer"], schedule=values["schedule"], warmup=int(values["warmup"]),
                    label_smoothing=float(values["label_smoothing"]),
                    grad_clip=float(values["grad_clip"]) if values["grad_clip"] is not None else None,
                    freeze=tuple(values["freeze"]),
                    head_lr=float(values["head_lr"]) if values["head_lr"] is not None else None,
                    target=values["target"], threads=torch.get_num_threads(), threads_why=threads_why,
                    val_split=float(values["val_split"]) if values["val_split"] is not None else None,
                    keep=values["keep"], patience=int(values["patience"]) if values["patience"] is not None else None,
                    normalize=values["normalize"], normalize_why=normalize_why, freeze_bn=bool(values["freeze_bn"]),
                    drop=tuple(values["drop"]))
    if config.val_split is not None:
        if data.val is not None:
            raise SpecError([Diagnostic(d.CONFLICT, f"--val-split with {desc.name}, whose val/ folder is its "
                                        "validation split", None, "leave out --val-split", file="--val-split")])
        data = selection.split_off(data, config.val_split, derived_seed(config.seed, "val-split"))
    selection.needs_validation(config, data)
    data = replace(data, baseline=baseline.baseline(data, "test"))  # fitted on the training rows kept

    # Model, optimizer, schedule. Every rank seeds alike, so initial weights agree (DDP would
    # broadcast rank 0's anyway); dropout then draws from a per-rank stream.
    from ..nn.build import build_model
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = build_model(net, memory=memory)
    if init is not None:
        from .transfer import initialise
        initialised = initialise(model, init, partial=init_partial)
    model = model.to(dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = cuda_channels_last(model, net.input)
    torch.manual_seed(derived_seed(config.seed, "rank", dd.rank))
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = optimizer_for(model, config)
    scheduler = scheduler_for(optimizer, config)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp == "fp16")
    report(say, net, record, data, config, origin, dd, run_dir, ckpt)  # every setting checked by now
    if init is not None:
        for line in initialised.lines():
            say(line)
    metrics: list[dict[str, float]] = []
    start_epoch = 0
    if ckpt:
        assert run_dir is not None  # resume refuses a missing out=
        checkpoints.restore(ckpt, model, optimizer, scheduler, scaler, run_dir / CHECKPOINT)
        metrics = [dict(row) for row in ckpt["metrics"]]
        start_epoch = int(ckpt["epoch"])
        states = ckpt["rng"]
        if len(states) == dd.world:
            try:
                set_rng_state(states[dd.rank])
            except (RuntimeError, ValueError, TypeError) as e:  # CUDA states are checked only here
                raise checkpoints.invalid(run_dir / CHECKPOINT, f"invalid checkpoint: 'rng[{dd.rank}]' is not a "
                                          f"random state this machine accepts ({e})", "the file was edited") from None
        say(f"resumed from {run_dir / CHECKPOINT} after epoch {start_epoch}")
        if config.epochs > int(ckpt["config"]["epochs"]):
            scheduler, lrs = replayed(optimizer, config, start_epoch)
            say(_extension(int(ckpt["config"]["epochs"]), config.epochs, metrics, lrs))
    if run_dir is not None and dd.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if record is not None:
            atomic_write(run_dir / "spec.dense", _as_trained(record))
    run = Run(net=net, record=record, data=data, config=config, dd=dd, device=dev, amp=amp, model=model,
              optimizer=optimizer, scheduler=scheduler, scaler=scaler, run_dir=run_dir, log=log,
              progress=progress, callback=callback)
    last_checkpoint, stopped = fit(run, metrics, start_epoch,
                                   cast(Path, run_dir) / CHECKPOINT if ckpt else None)  # as above

    test = None
    if data.val is not None and metrics and stopped != "max-steps":
        test = _test_once(run, metrics)
    if metrics and stopped != "max-steps":
        for line in _with_baseline(run, test or _last_result(metrics)):
            say(line)
    seconds = time.perf_counter() - started
    if test is not None:
        say(f"done: {_score(test)} on the test split (scored once), with the weights of epoch {test['epoch']} "
            f"({config.keep}) after {metrics[-1]['epoch']} epochs in {seconds:.1f}s"
            + (f"; run directory {run_dir}" if run_dir is not None else ""))
    elif metrics:
        last = metrics[-1]
        score = (f"test RMSE {tabular.format_rmse(last['test_rmse'])}" + (f" (log RMSE {last['test_log_rmse']:.4f})"
                                                         if "test_log_rmse" in last else "")
                 if "test_rmse" in last else f"test accuracy {100 * last['test_acc']:.2f}%")
        say(f"done: {score} after epoch {last['epoch']} "
            f"in {seconds:.1f}s" + (f"; run directory {run_dir}" if run_dir is not None else ""))
    return RunResult(network=net.name, data=desc.name, config=config, metrics=tuple(metrics),
                     model=model.eval(), run_dir=run_dir, checkpoint=last_checkpoint, seconds=seconds,
                     stopped=stopped, test=test)


def _normalised(data: datasets.Data, setting: str, ckpt: dict | None, init) -> tuple[datasets.Data, str]:
    """`data` with the statistics `setting` chooses (training/normalize.py); on resume, the checkpoint's."""
    if data.tabular:
        if setting not in ("auto", "data"):
            raise SpecError([Diagnostic(d.CONFLICT, f"--normalize {setting} with tabular data: its pipeline "
                                        "standardises every column", None, "leave out --normalize",
                                        file="--normalize")])
        return data, ""
    if ckpt is not None and "mean" in ckpt["data"]:
        return replace(data, mean=tuple(ckpt["data"]["mean"]), std=tuple(ckpt["data"]["std"])), \
            ckpt["config"].get("normalize_why") or "from the checkpoint"
    mean, std, why = normalization.choose(setting, data, init)
    return replace(data, mean=mean, std=std), why


def _score(row: dict) -> str:
    if "test_rmse" in row:
        return f"test RMSE {tabular.format_rmse(row['test_rmse'])}" + (
            f" (log RMSE {row['test_log_rmse']:.4f})" if row.get("test_log_rmse") is not None else "")
    return f"test accuracy {100 * row['test_acc']:.2f}%"


def _test_once(run: Run, metrics: list[dict]) -> dict:
    """The test split, scored once with the kept weights (the best epoch's, or the last's);
    RUN_DIR/result.json records it beside that epoch's validation numbers."""
    config, data, model, dev = run.config, run.data, run.model, run.device
    epoch = metrics[-1]["epoch"]
    if config.keep == "best":
        state = selection.kept_state(run.run_dir, run.kept)
        if state is not None:
            model.load_state_dict(state)
            epoch = selection.best_epoch(metrics) or epoch
    kw: dict[str, Any] = dict(device=dev, amp=run.amp, batch_size=max(256, config.batch_size),
                              workers=config.workers, dd=run.dd)
    if data.task == "regression":
        loss, rmse, log_rmse, total = evaluate_regression(model, data, **kw)
        scores: dict[str, Any] = {"test_loss": loss, "test_rmse": rmse, "test_log_rmse": log_rmse}
    else:
        loss, acc, _, total = evaluate_split(model, data, **kw)
        scores = {"test_loss": loss, "test_acc": acc}
    row = next(r for r in metrics if r["epoch"] == epoch)
    return {"split": "test", "kept": config.keep, "epoch": epoch, "epochs": metrics[-1]["epoch"], **scores,
            "test_examples": total, **{k: v for k, v in row.items() if k.startswith("val_")}}


def _last_result(metrics: list[dict]) -> dict:
    """Without a validation split, the run's result is its last epoch's test numbers."""
    last = metrics[-1]
    return {"split": "test", "kept": "last", "epoch": last["epoch"], "epochs": last["epoch"],
            **{k: v for k, v in last.items() if k.startswith("test_")}}


def _with_baseline(run: Run, result: dict) -> list[str]:
    """Adds R² (a regression) and the baseline on the test split to `result`, writes it to
    RUN_DIR/result.json (with a validation split), and returns the lines to print."""
    data = run.data
    if data.task == "regression":
        result["test_r2"] = baseline.model_r2(data, result["test_rmse"])
    result["baseline"] = data.baseline
    if run.dd.main and data.val is not None:  # without one, the last row of metrics.csv is the result
        selection.write_result(run.run_dir, result)
    return baseline.lines(result, result["baseline"])



def _as_trained(record: dict) -> str:
    """spec.dense: the spec's text, headed by the --set values it was trained with (the
    checkpoint holds them; `compile RUN_DIR` and `predict RUN_DIR` apply them)."""
    if not record["overrides"]:
        return record["text"]
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else "no"
        return f"{v['fraction'][0]}/{v['fraction'][1]}" if isinstance(v, dict) else str(v)
    shown = " ".join(f"{k}={value(v)}" for k, v in record["overrides"])
    return (f"# trained with --set {shown}: densedsl compile RUN_DIR (or this file with --set {shown})\n"
            + record["text"])


# --- evaluation ----------------------------------------------------------------------------------

def _extension(before: int, after: int, metrics: list[dict], lrs: list[float]) -> str:
    """What extending a run from `before` to `after` epochs means for its result. The epochs
    done keep what they were trained with; the rest follow the `after`-epoch schedule. The
    result equals a fresh `after`-epoch run bit for bit exactly when every epoch done ran at the
    learning rate that run uses (the data order, augmentation and dropout of an epoch depend only
    on the seed and the epoch number)."""
    differ = [(row["epoch"], row["lr"], lr) for row, lr in zip(metrics, lrs) if row["lr"] != lr]
    head = f"extending the run from {before} to {after} epochs: the remaining epochs follow the {after}-epoch schedule"
    if not differ:
        return head + f"; the result is exactly that of a {after}-epoch run"
    shown = ", ".join(f"epoch {e} ran at lr {was:g} where a {after}-epoch run uses {now:g}"
                      for e, was, now in differ[:3]) + (" …" if len(differ) > 3 else "")
    return head + f"; it is not that of a {after}-epoch run from the start ({shown})"


def evaluate(checkpoint: str | os.PathLike, data: str | None = None, *, split: str = "test",
             batch_size: int = 256, device: str = "auto", amp: str = "auto",
             workers: int | None = None) -> EvalResult:
    """Rebuild the model from a checkpoint alone and measure it on a data set (default: the one
    it was trained on), normalised with the training run's statistics."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', not {split!r}")
    check_settings({"batch_size": batch_size, **({"workers": workers} if workers is not None else {})}, None)
    ckpt = read_checkpoint(checkpoint)
    if ckpt["spec"] is not None:  # E307 before building: a checkpoint may carry a spec too large here
        from ..analysis.budget import check_evaluation
        check_evaluation(spec_from_record(ckpt["spec"]).network, batch=batch_size, device=device)
    model, spec = checkpoints.model_and_spec(ckpt, Path(checkpoint), "standard")
    net = spec.network
    saved = ckpt["data"]
    with _data_hint(data is None, saved["name"]):
        desc = datasets.describe(data or saved["name"])
    if desc.tabular and saved["kind"] in datasets.TABULAR_KINDS:  # encode as the model was trained
        pipeline = tabular.Pipeline.from_record(saved["pipeline"])
        desc = replace(desc, target=pipeline.target)
    elif desc.tabular or saved["kind"] in datasets.TABULAR_KINDS:
        raise SpecError([Diagnostic(d.DATA_MISMATCH, f"the checkpoint was trained on {saved['name']}; it cannot "
                                    f"be evaluated on {desc.name}", None, "pass data of the kind it was "
                                    "trained on", file="--data")])
    else:
        pipeline = None
    d.raise_if_errors(check_data(net, desc))
    dd = setup("cpu" if device == "cpu" or not torch.cuda.is_available() else "cuda")
    try:
        dev = pick_device(device, dd)
        amp = pick_amp(amp, dev)
        with _data_hint(data is None, saved["name"]):
            loaded = datasets.load(desc, shape=net.input, classes=net.head.classes, task=tabular.task_of(net),
                                   pipeline=pipeline)
        if pipeline is None and saved["kind"] == desc.kind and not loaded.tabular:
            # The statistics the model was trained with, not the evaluation data's own.
            loaded = replace(loaded, mean=tuple(saved["mean"]), std=tuple(saved["std"]),
                             pixel_max=float(saved["pixel_max"]))
        model = model.to(dev)
        if dev.type == "cuda" and not loaded.tabular:
            model = cuda_channels_last(model, net.input)
        rmse = log_rmse = None
        if loaded.task == "regression":
            loss, rmse, log_rmse, total = evaluate_regression(model, loaded, device=dev, amp=amp, batch_size=batch_size,
                                                              workers=workers or 0, dd=dd, split=split)
            acc, correct = float("nan"), 0
        else:
            loss, acc, correct, total = evaluate_split(model, loaded, device=dev, amp=amp, batch_size=batch_size,
                                                       workers=workers or 0, dd=dd, split=split)
    finally:
        if dd.created:
            dist.destroy_process_group()
    return EvalResult(loss=loss, accuracy=acc, correct=correct, total=total, network=net.name,
                      data=desc.name, epoch=int(ckpt["epoch"]), rmse=rmse, log_rmse=log_rmse)


@contextmanager
def _data_hint(from_checkpoint: bool, name: str):
    """When the data a checkpoint names is gone, the fix `eval` can make is --data."""
    try:
        yield
    except SpecError as e:
        if not from_checkpoint or not any(x.code in (d.FILE_NOT_FOUND, d.NO_DATA) for x in e.diagnostics):
            raise
        kind = name.partition(":")[0]
        hint = (f"the checkpoint was trained on {name}; pass --data {kind}:DIR to evaluate on where "
                "that data is now")
        raise SpecError([replace(x, hint=hint) if x.code in (d.FILE_NOT_FOUND, d.NO_DATA) else x
                         for x in e.diagnostics]) from None
