"""The training loop: epochs of optimizer steps, evaluation after each, a checkpoint and a
metrics row per epoch, and the checks that stop a diverging run before it saves NaNs.

Reproducibility: the data order of epoch e comes from (seed, e) alone (DistributedSampler's
rule) and augmentation from (seed, e, rank); the global RNGs (dropout) are saved in every
checkpoint and restored on resume. On the CPU a run killed after an epoch and resumed ends with
exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sized, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from ..core import diagnostics as d
from ..core.diagnostics import Diagnostic, SpecError
from ..language.network import Network
from . import checkpoints, datasets, selection
from .checkpoints import CHECKPOINT
from .config import Config, Log
from .distributed import Dist, agree, all_sum, gather
from .rundir import CURVES, METRICS, write_metrics
from .tabular import format_rmse

_PLAIN_EVERY_S = 30.0  # without a terminal, a progress line at most this often inside an epoch
_CURVES_EVERY_S = 10.0


@dataclass(slots=True, kw_only=True)
class Run:
    """What the epoch loop works on: the run's model, optimizer and settings, and where it writes."""

    net: Network
    record: dict | None
    data: datasets.Data
    config: Config
    dd: Dist
    device: torch.device
    amp: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    run_dir: Path | None
    log: Log | None
    progress: bool
    callback: Callable[[dict], bool | None] | None
    kept: dict = field(default_factory=dict)  # --keep best: the best epoch's weights (selection.keep_best)


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed from parts; random.Random hashes a str seed with SHA-512 (stable across runs)."""
    return random.Random(":".join(map(str, parts))).getrandbits(63)


def rng_state() -> dict:
    version, state, gauss = random.getstate()
    return {"python": {"version": version, "state": torch.tensor(state, dtype=torch.int64),
                       "gauss": gauss},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Progress:
    """A tqdm bar per epoch on a terminal; otherwise a plain line now and then."""

    def __init__(self, log: Log | None, enabled: bool, total: int, epoch: int, epochs: int,
                 target_std: float | None = None):
        self.log, self.epoch, self.epochs, self.total = log, epoch, epochs, total
        self.target_std = target_std  # a regression: show the RMSE (in target units), not accuracy
        self.unit = "row" if target_std is not None else "img"
        self.bar = None
        self.start = self.last = time.perf_counter()
        self.done = 0
        if enabled and log is not None and sys.stdout.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit=self.unit, unit_scale=True, leave=False, dynamic_ncols=True,
                            desc=f"epoch {epoch}/{epochs}", file=sys.stdout)

    def _score(self, loss: float, acc: float | None) -> tuple[str, str]:
        if self.target_std is not None:
            return "rmse", format_rmse(math.sqrt(max(loss, 0.0)) * self.target_std)
        assert acc is not None  # a classification's batches report their accuracy
        return "acc", f"{100 * acc:.2f}%"

    def update(self, images: int, loss: float | None, acc: float | None) -> None:
        self.done += images
        if self.bar is not None:
            self.bar.update(images)
            if loss is not None:
                name, score = self._score(loss, acc)
                self.bar.set_postfix({"loss": f"{loss:.4f}", name: score}, refresh=False)
            return
        now = time.perf_counter()
        if self.log is not None and loss is not None and now - self.last >= _PLAIN_EVERY_S:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            name, score = self._score(loss, acc)
            self.log(f"  epoch {self.epoch}/{self.epochs}  {self.done}/{self.total} "
                     f"{'rows' if self.unit == 'row' else 'images'}  "
                     f"loss {loss:.4f}  {name} {score}  {rate:.0f} {self.unit}/s  eta {eta:.0f}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Diverged(Exception):
    def __init__(self, step: int, value: float | str, what: str = "the training loss"):
        self.step, self.value, self.what = step, value, what


def _diverged(e: _Diverged, epoch: int, optimizer, net: Network, last_checkpoint: Path | None) -> SpecError:
    kept = (f"the last good checkpoint is {last_checkpoint} (epoch {epoch - 1})"
            if last_checkpoint is not None else "no checkpoint was written")
    return SpecError([Diagnostic(d.DIVERGED, f"{e.what} became {e.value} at epoch {epoch}, step {e.step} "
                                 f"(learning rate {optimizer.param_groups[0]['lr']:g})", None,
                                 f"{kept}; try a lower --lr, --amp bf16 or off instead of fp16, or check "
                                 "the data", file=net.name)])


def _check_weights(model: nn.Module, step: int) -> None:
    """After the last step of an epoch: the loss was finite, but the step that followed it may
    not have been (a huge or NaN learning rate), and that step's weights would be saved."""
    name = checkpoints.non_finite(model.state_dict())
    if name is not None:
        raise _Diverged(step, "non-finite", f"the weights ({name.removeprefix('module.')})")


def _loader(dataset, batches, workers: int, pin: bool, seed: int) -> DataLoader:
    # A private generator: the DataLoader draws its worker base seed from it, not from the
    # global RNG, so loading never perturbs dropout's random stream.
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin,
                      collate_fn=datasets.keep_batch, persistent_workers=False,
                      generator=torch.Generator().manual_seed(seed))


class _EvalBatches:
    """Every rank takes indices rank, rank + world, ... (no padding: each image counts once)."""

    def __init__(self, n: int, batch_size: int, dd: Dist):
        self.indices = list(range(dd.rank, n, dd.world))
        self.batch_size = batch_size

    def __iter__(self):
        for i in range(0, len(self.indices), self.batch_size):
            yield self.indices[i:i + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)


def evaluate_split(model: nn.Module, data: datasets.Data, *, device: torch.device, amp: str,
              batch_size: int, workers: int, dd: Dist, split: str = "test",
              norm: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[float, float, int, int]:
    """(mean loss, accuracy, correct, total) over a split, summed across ranks."""
    dataset = {"test": data.test, "val": data.val}.get(split, data.train)
    mean, std = norm if norm is not None else norm_tensors(data, device)
    loader = _loader(dataset, _EvalBatches(len(dataset), batch_size, dd), workers,
                     device.type == "cuda", 0)
    was_training = model.training
    model.eval()
    loss_sum: float
    correct: float  # all_sum over the ranks gives floats back
    total: float
    loss_sum, correct, total = 0.0, 0, 0
    with torch.no_grad(), _autocast(device, amp):
        for images, labels in datasets.batches(loader):
            x = _inputs(images.to(device, non_blocking=True), data, mean, std)
            y = labels.to(device, non_blocking=True)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
    model.train(was_training)
    loss_sum, correct, total = all_sum([loss_sum, correct, total], dd, device)
    return loss_sum / max(total, 1), correct / max(total, 1), int(correct), int(total)


def evaluate_regression(model: nn.Module, data: datasets.Data, *, device: torch.device, amp: str,
                        batch_size: int, workers: int, dd: Dist, split: str = "test"
                        ) -> tuple[float, float, float | None, int]:
    """(MSE of the standardised target, RMSE in the target's units, RMSE of the logs or None,
    rows) over a split, summed across ranks. The log RMSE is d2l's house-price score: predictions
    below the pipeline's floor (1, or the smallest target when that is below 1) are raised to it;
    it exists only when every target is positive."""
    pipeline = data.pipeline
    dataset = {"test": data.test, "val": data.val}.get(split, data.train)
    loader = _loader(dataset, _EvalBatches(len(dataset), batch_size, dd), workers, device.type == "cuda", 0)
    was_training = model.training
    model.eval()
    squares = torch.zeros((), dtype=torch.float64, device=device)
    log_squares = torch.zeros((), dtype=torch.float64, device=device)
    total = 0
    with torch.no_grad(), _autocast(device, amp):
        for features, targets in datasets.batches(loader):
            out = model(features.to(device, non_blocking=True)).double().reshape(len(targets))
            y = targets.to(device, non_blocking=True).double()
            squares += (out - y).square().sum()
            if pipeline.target_floor is not None:
                predicted = (out * pipeline.target_std + pipeline.target_mean).clamp_min(pipeline.target_floor)
                actual = y * pipeline.target_std + pipeline.target_mean
                log_squares += (predicted.log() - actual.log()).square().sum()
            total += len(targets)
    model.train(was_training)
    squares_sum, log_squares_sum, rows = all_sum([float(squares), float(log_squares), total], dd, device)
    mse = squares_sum / max(rows, 1)
    log_rmse = math.sqrt(log_squares_sum / max(rows, 1)) if pipeline.target_floor is not None else None
    return mse, math.sqrt(mse) * pipeline.target_std, log_rmse, int(rows)


def _inputs(batch: torch.Tensor, data: datasets.Data, mean: torch.Tensor, std: torch.Tensor,
            augment: str = "none", generator: torch.Generator | None = None) -> torch.Tensor:
    """The network's input for a batch: tabular rows are encoded already (tabular.Pipeline);
    images are scaled, augmented and normalised (datasets.prepare_batch)."""
    if data.tabular:
        return batch
    x = datasets.prepare_batch(batch, pixel_max=data.pixel_max, mean=mean, std=std, augment=augment,
                               generator=generator)
    if batch.device.type == "cuda" and x.dim() == 4:  # see cuda_channels_last
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def cuda_channels_last(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """A 2-D network's model laid out channels_last for CUDA (cudnn's NHWC kernels; `_inputs`
    lays the batches out alike). A 1-D or 3-D network is left as it is: torch's channels_last
    needs rank-4 tensors (it raises for a Conv3d's weights and for a batch of volumes), and
    channels_last_3d on CUDA is unmeasured (issue 25 had no GPU); on the CPU, 3-D training gained
    nothing from it (DenseNet._converts_to_channels_last)."""
    if len(input_shape) != 3:
        return model
    # the ignore: torch's stub for Module.to lacks memory_format, which it takes
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _loss(outputs: torch.Tensor, y: torch.Tensor, regression: bool, label_smoothing: float = 0.0) -> torch.Tensor:
    """MSE of the standardised target for a regression (one output), else cross-entropy."""
    if regression:
        return F.mse_loss(outputs.float().reshape(len(y)), y.float())
    return F.cross_entropy(outputs.float(), y, label_smoothing=label_smoothing)


def norm_tensors(data: datasets.Data, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(data.mean, device=device), torch.tensor(data.std, device=device))


def _autocast(device: torch.device, amp: str):
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "off")



# --- optimizer and schedule ------------------------------------------------------------------------

HEAD = "classifier."  # the parameters --head-lr applies to


def stages(model: nn.Module) -> dict[str, str | tuple[str, ...]]:
    """Stage name → parameter-name prefix, for --freeze: `features` (all but the head), `stem`
    (what comes before the first dense block) and every module of `features` by name."""
    names = [name for name, _ in cast(nn.Module, model.features).named_children()]  # a DenseNet's
    first_block = next((i for i, n in enumerate(names) if n.startswith("denseblock")), len(names))
    found: dict[str, str | tuple[str, ...]] = {"features": "features."}
    if first_block:
        found["stem"] = tuple(f"features.{n}." for n in names[:first_block])
    found.update({name: f"features.{name}." for name in names})
    return found


def frozen_prefixes(model: nn.Module, freeze: tuple[str, ...]) -> tuple[str, ...]:
    """The module-name prefixes (with their dot) of the stages `freeze` names, checked."""
    known = stages(model)
    unknown = [name for name in freeze if name not in known]
    if unknown:
        raise SpecError([Diagnostic(d.OUT_OF_RANGE, f"--freeze {unknown[0]}: no such stage in this network",
                                    None, "freeze one of: " + ", ".join(known), file="--freeze")])
    return cast(tuple[str, ...],  # mypy narrows no dict item by isinstance
                tuple(p for name in freeze for p in ((known[name],) if isinstance(known[name], str)
                                                     else known[name])))


def frozen_parameters(model: nn.Module, freeze: tuple[str, ...]) -> set[str]:
    """The names of the parameters `freeze` (stage names, checked) keeps as they are."""
    prefixes = frozen_prefixes(model, freeze)
    return {name for name, _ in model.named_parameters() if prefixes and name.startswith(prefixes)}


def hold_norms(model: nn.Module, config: Config) -> None:
    """After model.train(): the batch norms of frozen stages (of every stage with --freeze-bn)
    back in eval mode, so they normalise with, and keep, the running statistics of the initial
    weights. A frozen layer whose statistics follow the new data is no longer the layer it was."""
    if not config.freeze and not config.freeze_bn:
        return
    inner = cast(nn.Module, getattr(model, "module", model))  # under DistributedDataParallel
    prefixes = frozen_prefixes(inner, config.freeze)
    for name, module in inner.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and (
                config.freeze_bn or (prefixes and f"{name}.".startswith(prefixes))):
            module.eval()


def group_rates(optimizer: torch.optim.Optimizer, config: Config) -> dict[str, float]:
    """The learning rates of an epoch's row: `lr` the base rate (the body's group; the schedule's
    value when the body is frozen whole), `head_lr` the classifier's when --head-lr gave it a group."""
    groups = optimizer.param_groups
    # named by optimizer_for; a checkpoint from before the names has [body, head] or [body]
    head = next((g for g in groups if g.get("name") == "head"), groups[1] if len(groups) == 2 else None)
    body = next((g for g in groups if g is not head), None)
    if body is not None:
        rates = {"lr": float(body["lr"])}
    else:  # the body frozen whole: the schedule's factor, read off the head's group
        assert head is not None
        rates = {"lr": config.lr * (head["lr"] / head["initial_lr"] if head.get("initial_lr") else 1.0)}
    if head is not None:
        rates["head_lr"] = float(head["lr"])
    return rates


def optimizer_for(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    """SGD (the paper's) or AdamW over the parameters not frozen; with --head-lr the classifier
    is a second parameter group with its own learning rate."""
    frozen = frozen_parameters(model, config.freeze)
    body: list[nn.Parameter] = []
    head: list[nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
        else:
            (head if config.head_lr is not None and name.startswith(HEAD) else body).append(parameter)
    # An empty group (everything but the head frozen) would only show its unused rate in the log.
    groups: list[dict[str, Any]] = (([{"params": body, "name": "body"}] if body else [])
                                    + ([{"params": head, "lr": config.head_lr, "name": "head"}] if head else []))
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)


def cosine_factor(epoch: int, epochs: int, warmup: int) -> float:
    """The cosine schedule's factor for epoch `epoch` (0-based): linear warm-up over `warmup`
    epochs, then half a cosine from 1 down to 0 at the end of the last epoch."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))


def scheduler_for(optimizer: torch.optim.Optimizer, config: Config):
    """The paper's step schedule (MultiStepLR at the milestones) or cosine; stepped once an epoch."""
    if config.schedule == "cosine":
        # A function, so that LambdaLR's state_dict holds None for it: plain data only.
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: cosine_factor(epoch, config.epochs, config.warmup))
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, config.milestone_epochs(), config.gamma)


def replayed(optimizer: torch.optim.Optimizer, config: Config, epochs_done: int):
    """A fresh scheduler for `config` stepped `epochs_done` times from the initial learning rates:
    the schedule a run of config.epochs would be at, for a run being extended. Returns it and the
    learning rate of each epoch done under it."""
    import warnings
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"]
        del group["initial_lr"]  # a scheduler built on a group with initial_lr would keep it
    scheduler = scheduler_for(optimizer, config)
    lrs = []
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": on purpose
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(epochs_done):
            lrs.append(group_rates(optimizer, config)["lr"])
            scheduler.step()
    return scheduler, lrs


def fit(run: Run, metrics: list[dict], start_epoch: int, last_checkpoint: Path | None
        ) -> tuple[Path | None, str | None]:
    """Train epochs start_epoch + 1 .. config.epochs, appending to `metrics`; returns (the last
    checkpoint written, why it stopped early or None)."""
    net, data, config, dd, dev, amp = run.net, run.data, run.config, run.dd, run.device, run.amp
    model, optimizer, scheduler, scaler, run_dir = run.model, run.optimizer, run.scheduler, run.scaler, run.run_dir
    say = run.log or (lambda line: None)
    workers, max_steps = config.workers, config.max_steps
    trained = nn.parallel.DistributedDataParallel(
        model, device_ids=[dev.index] if dev.type == "cuda" else None) if dd.active else model

    mean, std = norm_tensors(data, dev)
    regression = data.task == "regression"
    held_out = "val" if data.val is not None else "test"  # the test split waits for the end
    stopped = None
    steps_done = 0
    curves_at = -math.inf
    for epoch in range(start_epoch + 1, config.epochs + 1):
        t0 = time.perf_counter()
        sampler: DistributedSampler[int] = DistributedSampler(
            data.train, num_replicas=dd.world, rank=dd.rank, shuffle=True, seed=config.seed)
        sampler.set_epoch(epoch)
        # A last batch of one breaks BatchNorm when the final map is 1x1: drop it then.
        batches = BatchSampler(sampler, config.batch_size, drop_last=len(sampler) % config.batch_size == 1)
        loader = _loader(data.train, batches, workers, dev.type == "cuda", derived_seed(config.seed, epoch))
        augment_rng = torch.Generator().manual_seed(derived_seed(config.seed, "augment", epoch, dd.rank))
        limit = None if max_steps is None else max_steps - steps_done
        try:
            loss, acc, seen, steps = train_epoch(
                trained, loader, optimizer, scaler, data, config, dev, amp, mean, std, augment_rng,
                dd, _Progress(run.log, run.progress, len(cast(Sized, batches.sampler)) * dd.world, epoch,
                              config.epochs, data.pipeline.target_std if regression else None), limit)
        except _Diverged as e:
            raise _diverged(e, epoch, optimizer, net, last_checkpoint) from None
        steps_done += steps
        train_seconds = time.perf_counter() - t0
        rates = group_rates(optimizer, config)
        if metrics and "head_lr" not in metrics[0]:  # a run resumed from before the column: rows alike
            rates.pop("head_lr", None)
        if regression:
            test_loss, test_rmse, test_log_rmse, _ = evaluate_regression(
                model, data, device=dev, amp=amp, batch_size=max(256, config.batch_size), workers=workers, dd=dd,
                split=held_out)
        else:
            test_loss, test_acc, _, _ = evaluate_split(model, data, device=dev, amp=amp,
                                                       batch_size=max(256, config.batch_size),
                                                       workers=workers, dd=dd, norm=(mean, std), split=held_out)
        if not math.isfinite(test_loss):  # finite weights can still overflow the logits
            raise _diverged(_Diverged(steps, test_loss, f"the {held_out} loss"), epoch, optimizer, net,
                            last_checkpoint)
        if regression:  # checkpoint_schema.REGRESSION_FIELDS
            row = {"epoch": epoch, "steps": steps, **rates, "train_loss": loss,
                   "train_rmse": math.sqrt(loss) * data.pipeline.target_std,
                   "test_loss": test_loss, "test_rmse": test_rmse,
                   **({"test_log_rmse": test_log_rmse} if test_log_rmse is not None else {}),
                   "rows_per_s": seen / max(train_seconds, 1e-9), "seconds": time.perf_counter() - t0}
        else:
            row = {"epoch": epoch, "steps": steps, **rates, "train_loss": loss, "train_acc": acc,
                   "test_loss": test_loss, "test_acc": test_acc,
                   "images_per_s": seen / max(train_seconds, 1e-9), "seconds": time.perf_counter() - t0}
        if held_out == "val":
            row = selection.validation_row(row)
        metrics.append(row)
        partial = max_steps is not None and steps_done >= max_steps and steps < len(batches)
        if not partial:
            scheduler.step()
        run_seconds = [r["seconds"] for r in metrics[len(metrics) - (epoch - start_epoch):]]
        eta = sum(run_seconds) / len(run_seconds) * (config.epochs - epoch)
        say(_epoch_line(row, config.epochs) + ("  (partial epoch: --max-steps)" if partial else
                                              f"  eta {_duration(eta)}" if epoch < config.epochs else ""))
        if max_steps is not None and steps_done >= max_steps:
            stopped = "max-steps"
        elif run.callback is not None and agree(bool(run.callback(dict(row))), dd, dev):
            stopped = "callback"
        elif selection.out_of_patience(metrics, config.patience):
            stopped = "patience"
            say(f"early stop: no better {held_out} score for {config.patience} epochs "
                f"(best: epoch {selection.best_epoch(metrics)})")
        if run_dir is not None:
            # Every rank takes part in gathering the RNG states; only rank 0 writes.
            rng = gather(rng_state(), dd) if not partial else []
            if dd.main:
                if not partial:
                    checkpoints.save(run_dir / CHECKPOINT, model, optimizer, scheduler, scaler, epoch,
                                     metrics, config, run.record, data, net, rng)
                    last_checkpoint = run_dir / CHECKPOINT
                write_metrics(run_dir / METRICS, metrics)
                # Drawing costs ~0.3 s: with sub-second epochs, redraw at most every _CURVES_EVERY_S.
                if epoch == config.epochs or stopped or time.perf_counter() - curves_at >= _CURVES_EVERY_S:
                    from ..views.plots import write_curves
                    write_curves(metrics, run_dir / CURVES, title=f"{net.name} on {data.name}", held_out=held_out)
                    curves_at = time.perf_counter()
        if config.keep == "best" and not partial:  # every rank keeps the weights; rank 0 writes best.pt
            selection.keep_best(run_dir if dd.main else None, run.kept, model, metrics)
        if dd.active:
            dist.barrier()
        if stopped:
            break

    return last_checkpoint, stopped


def train_epoch(model, loader, optimizer, scaler, data, config: Config, device, amp, mean, std,
                 augment_rng, dd: Dist, bar: _Progress, limit: int | None):
    """One pass over the training split; returns (mean loss, accuracy, images, steps), all ranks."""
    model.train()
    hold_norms(model, config)
    # Sums stay on the device; a host sync (needed for the bar and the finiteness check) happens
    # every step on the CPU, where it is free, and every `sync` steps on a GPU.
    sync = 1 if device.type == "cpu" else 25
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    bad_value = torch.zeros((), dtype=torch.float32, device=device)
    seen = steps = 0
    regression = data.task == "regression"
    try:
        for step, (images, labels) in enumerate(datasets.batches(loader), start=1):
            if limit is not None and steps >= limit:
                break
            x = _inputs(images.to(device, non_blocking=True), data, mean, std, config.augment, augment_rng)
            y = labels.to(device, non_blocking=True)
            with _autocast(device, amp):
                logits = model(x)
                loss = _loss(logits, y, regression, config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not fp16-scaled ones
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                         config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                value = loss.detach()
                fresh = (first_bad < 0) & ~torch.isfinite(value)
                first_bad = torch.where(fresh, torch.tensor(step, device=device), first_bad)
                bad_value = torch.where(fresh, value.float(), bad_value)
                loss_sum += value.double() * len(y)
                if not regression:
                    correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            steps = step
            at_sync = step % sync == 0 or step == len(loader)
            if at_sync:
                _check_finite(first_bad, bad_value, dd, device)
                n = max(seen, 1)
                bar.update(len(y) * dd.world, float(loss_sum) / n, int(correct) / n)
            else:
                bar.update(len(y) * dd.world, None, None)
        _check_finite(first_bad, bad_value, dd, device)
        _check_weights(model, steps)
    finally:
        bar.close()
    total_loss, total_correct, total_seen = all_sum([float(loss_sum), float(correct), seen], dd, device)
    return total_loss / max(total_seen, 1), total_correct / max(total_seen, 1), int(total_seen), steps


def _check_finite(first_bad: torch.Tensor, bad_value: torch.Tensor, dd: Dist, device) -> None:
    never = 1 << 62
    step = torch.where(first_bad < 0, torch.tensor(never, device=device), first_bad)
    if dd.active:
        step = step.clone()
        dist.all_reduce(step, op=dist.ReduceOp.MIN)
    if int(step) < never:
        raise _Diverged(int(step), float(bad_value) if int(first_bad) >= 0 else float("nan"))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def _epoch_line(row: dict, epochs: int) -> str:
    s = "val" if "val_loss" in row else "test"  # which split the held-out numbers are
    if f"{s}_rmse" in row:
        log = f" log rmse {row[f'{s}_log_rmse']:.4f}" if f"{s}_log_rmse" in row else ""
        return (f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  lr {row['lr']:.4g}  "
                f"train loss {row['train_loss']:.4f} rmse {format_rmse(row['train_rmse'])}  "
                f"{s} loss {row[f'{s}_loss']:.4f} rmse {format_rmse(row[f'{s}_rmse'])}{log}  "
                f"{row['rows_per_s']:.0f} rows/s  {row['seconds']:.1f}s")
    return (f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  lr {row['lr']:.4g}  "
            f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%  "
            f"{s} loss {row[f'{s}_loss']:.4f} acc {100 * row[f'{s}_acc']:.2f}%  "
            f"{row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s")


