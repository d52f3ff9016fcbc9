"""Training and evaluating compiled specs: the paper's recipe, checkpoints that resume exactly,
and the same code under `torchrun` (DistributedDataParallel).

    result = densedsl.train.train("specs/tiny_digits.dense", data="digits", epochs=30, out="runs/td")
    print(result.test_accuracy)

Defaults are the DenseNet paper's CIFAR recipe (Huang et al. 2017, §4.2): SGD with Nesterov
momentum 0.9, weight decay 1e-4, batch 64, learning rate 0.1 divided by 10 at 50% and 75% of the
epochs, random crop with 4-pixel zero padding and horizontal flip where the data calls for it,
per-channel normalisation. Every default is reported through `log` before training starts.

Reproducibility: the data order of epoch e comes from (seed, e) alone (DistributedSampler's
rule) and augmentation from (seed, e, rank); the global RNGs (dropout) are saved in every
checkpoint and restored on resume. On the CPU a run killed after an epoch and resumed ends with
exactly the weights of an uninterrupted run.

Run directory (`out`): `checkpoint.pt` (every epoch, atomically), `metrics.csv`, `curves.png`,
`spec.dense` (a copy of the spec text). Only rank 0 writes. A run holds an exclusive lock on the
directory (`RUN_DIR/.lock`, fcntl.flock) for its whole life, so a second run into the same
directory is refused (E910) instead of overwriting the first run's results; the kernel drops the
lock when the process dies, so even a SIGKILLed run leaves no stale lock. A checkpoint is never
written with non-finite weights, and one is read only after its CRCs and every entry check out
(`densedsl.checkpoints`).
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import random
import stat
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from . import checkpoints, datasets
from . import diagnostics as d
from .checkpoints import CHECKPOINT, FORMAT, FORMAT_VERSION, METRIC_FIELDS
from .diagnostics import Diagnostic, SpecError
from .files import atomic_path, atomic_write
from .network import Network

METRICS = "metrics.csv"
CURVES = "curves.png"
LOCK = ".lock"
AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICES = ("auto", "cpu", "cuda")

# The paper's recipe (§4.2); `epochs` and `augment` depend on the data (datasets.describe).
RECIPE = {"batch_size": 64, "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4,
          "milestones": (0.5, 0.75), "gamma": 0.1, "seed": 0}
# Settings a resumed run must share with its checkpoint: they decide what the weights become.
_RESUME_FIXED = ("data", "epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay",
                 "milestones", "gamma", "augment", "seed")
_PLAIN_EVERY_S = 30.0  # without a terminal, a progress line at most this often inside an epoch
_CURVES_EVERY_S = 10.0

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

    def milestone_epochs(self) -> list[int]:
        return sorted({max(1, round(f * self.epochs)) for f in self.milestones})


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
    stopped: str | None = None              # "max-steps" or "callback" when it ended early

    @property
    def test_accuracy(self) -> float:
        return self.metrics[-1]["test_acc"] if self.metrics else float("nan")

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


# --- distributed ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    created: bool = False  # this call initialised the process group and must destroy it

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_kind: str) -> _Dist:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, ...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return _Dist()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return _Dist(dist.get_world_size(), dist.get_rank(), local)
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return _Dist(world, rank, local, created=True)


def _all_sum(values: list[float], dd: _Dist, device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dd.active:
        dist.all_reduce(t)
    return t.tolist()


# --- spec and checkpoint records -------------------------------------------------------------

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


def _resolve_spec(spec: Any, network: str | None, params: dict[str, Any]) -> tuple[Network, dict | None]:
    """(the network, the record that rebuilds it from a checkpoint) for a Spec, path, text or Network."""
    if isinstance(spec, Network):
        if network is not None or params:
            raise TypeError("network= and parameters apply to spec text or files, not to a Network")
        return spec, None
    from .spec import as_spec
    s = as_spec(spec, network=network, **params)
    record = {"text": s.source.text, "source": s.source.name, "network": s.network.name,
              "overrides": [[k, _portable(v)] for k, v in s.overrides]}
    return s.network, record


def spec_from_record(record: dict):
    """Rebuild the `Spec` a checkpoint was trained from."""
    from .spec import parse
    overrides = {k: _unportable(v) for k, v in record["overrides"]}
    return parse(record["text"], record["source"], network=record["network"], **overrides)


def _checkpoint_error(path: Path, message: str, hint: str | None = None) -> SpecError:
    return SpecError([Diagnostic(d.BAD_FILE, message, None, hint, file=str(path))])


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a densedsl training checkpoint (a file, or the run directory holding one): refused
    unless it is a regular file whose zip records match their CRC-32s (E913), that loads with
    weights_only=True and whose every entry is one densedsl writes (E908). See `densedsl.checkpoints`."""
    return checkpoints.read(path)


def model_from_checkpoint(checkpoint: str | os.PathLike | dict, *, memory: str = "standard"):
    """(model with the checkpoint's weights, in eval mode, the Spec) from the checkpoint alone
    (a path, or what `read_checkpoint` returned)."""
    if isinstance(checkpoint, dict):
        checkpoints.check(checkpoint)
        return _model_from_checkpoint(checkpoint, Path("checkpoint"), memory)
    return _model_from_checkpoint(read_checkpoint(checkpoint), Path(checkpoint), memory)


def _model_from_checkpoint(ckpt: dict, where: Path, memory: str):
    from .compiler import build_model, load_weights
    if ckpt["spec"] is None:
        raise _checkpoint_error(where, "the checkpoint holds no spec text (it was trained from a Network "
                                "object)", "rebuild the model yourself and use "
                                "densedsl.load_weights(model, checkpoint)")
    spec = spec_from_record(ckpt["spec"])
    _check_checkpoint_data(ckpt, spec.network, where)
    model = build_model(spec.network, memory=memory)
    load_weights(model, ckpt["model"])
    return model.eval(), spec


def _check_checkpoint_data(ckpt: dict, net: Network, where: Path) -> None:
    """The data record must describe the spec's input and classes: its statistics normalise it."""
    saved = ckpt["data"]
    if tuple(saved["shape"]) != tuple(net.input):
        raise _checkpoint_error(where, f"invalid checkpoint: 'data.shape' {saved['shape']} is not the spec's "
                                f"input {'x'.join(map(str, net.input))}", "the file was edited")
    if net.head is None or saved["classes"] != net.head.classes:
        raise _checkpoint_error(where, f"invalid checkpoint: 'data.classes' {saved['classes']} is not the "
                                "spec's number of classes", "the file was edited")


# --- the run directory ---------------------------------------------------------------------------

_held_locks: set[int] = set()


def _close_held_locks() -> None:
    """In a forked child (a DataLoader worker): drop its copy of the lock, which is the run's."""
    for fd in _held_locks:
        try:
            os.close(fd)
        except OSError:
            pass
    _held_locks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_locks)


class RunLock:
    """An exclusive `fcntl.flock` on RUN_DIR/.lock, held for the life of a run.

    The kernel drops a flock when its process dies, however it dies, so a SIGKILLed run never
    leaves a stale lock. `release` removes the lock file (and the directory, when this run
    created it and wrote nothing into it); `acquire` therefore checks that the file it locked is
    still the one at that path, or a run that released it meanwhile would leave two runs holding
    locks on different files.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.fd: int | None = None
        self.created_dir = False

    def acquire(self) -> "RunLock":
        existed = self.run_dir.is_dir()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.created_dir = not existed
            while True:
                fd = self._open()
                if not self._lock(fd):
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                    os.close(fd)
                    raise SpecError([Diagnostic(
                        d.RUN_EXISTS, "another densedsl train" + (f" (pid {holder})" if holder.isdigit() else "")
                        + " is running in this run directory", None, "wait for it to finish, choose another "
                        "--out, or omit --out to let train pick a fresh directory", file=str(self.run_dir))])
                if self._still_at_path(fd):
                    break
                os.close(fd)  # removed by the run that just released it: lock the new file
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except FileExistsError:
            raise SpecError([Diagnostic(d.CANNOT_WRITE, "the run directory is a file, not a directory",
                                        None, "choose another --out", file=str(self.run_dir))]) from None
        except OSError as e:
            self._remove_dir_if_created()
            raise SpecError([Diagnostic(d.CANNOT_WRITE, f"cannot create the run directory: {e.strerror or e}",
                                        None, "check that the directory is writable",
                                        file=str(self.run_dir))]) from None
        self.fd = fd
        _held_locks.add(fd)
        return self

    def _open(self) -> int:
        # Never through a link: a run directory someone handed over could point .lock at a
        # file of yours, which the pid written below would overwrite.
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags | getattr(os, "O_NONBLOCK", 0), 0o644)
        except OSError as e:
            if os.path.islink(self.path):
                raise SpecError([Diagnostic(d.NOT_REGULAR, "the run directory's .lock is a symbolic link",
                                            None, "remove it (densedsl creates .lock itself)",
                                            file=str(self.path))]) from None
            raise e
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SpecError([Diagnostic(d.NOT_REGULAR, "the run directory's .lock is not a regular file",
                                        None, "remove it (densedsl creates .lock itself)", file=str(self.path))])
        return fd

    @staticmethod
    def _lock(fd: int) -> bool:
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no lock, as before
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:  # a file system without flock (some network mounts): no lock, as before
            return True
        return True

    def _still_at_path(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _remove_dir_if_created(self) -> None:
        if self.created_dir:
            try:
                self.run_dir.rmdir()  # only if empty: this run wrote nothing there
            except OSError:
                pass

    def release(self) -> None:
        if self.fd is None:
            return
        _held_locks.discard(self.fd)
        try:
            os.unlink(self.path)  # while still locked: see the class docstring
        except OSError:
            pass
        self._remove_dir_if_created()
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def _run_directory(out, dd: "_Dist", device: torch.device):
    """Rank 0 locks the run directory for the life of the run; when it cannot, every rank stops."""
    if out is None:
        yield
        return
    lock, refused = RunLock(out), None
    if dd.main:
        try:
            lock.acquire()
        except SpecError as e:
            refused = e
    if _agree(refused is not None, dd, device):
        raise refused or SpecError([Diagnostic(d.RUN_EXISTS, "rank 0 could not take the run directory",
                                               None, file=str(out))])
    try:
        yield
    finally:
        lock.release()


def _existing_run(run_dir: Path) -> str | None:
    """The output of an earlier run that `run_dir` holds, if any."""
    return next((name for name in (CHECKPOINT, METRICS) if (run_dir / name).exists()), None)


# --- checks before training ------------------------------------------------------------------

def check_data(network: Network, desc: datasets.Description) -> list[Diagnostic]:
    """The spec's input shape and classes against the data set's, before anything is read."""
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


def _check_settings(values: dict, threads: int | None) -> None:
    """Every training setting against the rules a checkpoint is held to (E105), before any work:
    a NaN learning rate, say, would otherwise take one step and save NaN weights."""
    problems = checkpoints.setting_problems(values)
    want = checkpoints.integer(1, 4096)(threads) if threads is not None else None
    if want is not None:
        problems.append(("threads", f"must be {want}, not {threads!r}"))
    if problems:
        raise SpecError([Diagnostic(d.OUT_OF_RANGE, f"{key.replace('_', ' ')} {problem}", None,
                                    file="--" + key.replace("_", "-")) for key, problem in problems])


def _check_batch_of_one(net: Network) -> None:
    """Batches of one image fail in batch norm on a 1x1 map (the analysis' W206): refuse them
    before training rather than crash at the first step. (A last batch of one is dropped.)"""
    from .analysis import analyze
    warning = next((w for w in analyze(net).diagnostics if w.code == d.TRAIN_TOO_SMALL), None)
    if warning is not None:
        raise SpecError([Diagnostic(d.OUT_OF_RANGE, f"batch size must be at least 2 for {net.name}: "
                                    f"{warning.message}", None, warning.hint, file="--batch-size")])


def _check_enough_data(data: datasets.Data, batch_size: int, dd: _Dist) -> None:
    """A split must hold images, and an epoch at least one batch (E208): otherwise a run
    "trains" zero steps and saves a checkpoint of its initial weights with a loss of 0."""
    per_process = math.ceil(len(data.train) / dd.world)
    if per_process == 1 and batch_size > 1:  # the batch of one is dropped (see the loop): no steps
        raise SpecError([Diagnostic(
            d.NO_DATA, f"{data.name} has {len(data.train)} training image{'s' if len(data.train) != 1 else ''}"
            + (f" for {dd.world} processes" if dd.active else "") + ": one image per batch cannot be trained "
            "on (batch norm needs two)", None, "train on a data set with more images", file="--data")])


def _device(requested: str, dd: _Dist) -> torch.device:
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise SpecError([Diagnostic(d.NO_DEVICE, "--device cuda, but no CUDA device is available "
                                    f"(torch {torch.__version__})", None,
                                    "use --device cpu, or install a CUDA build of PyTorch", file="--device")])
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dd.local_rank)


def _amp(requested: str, device: torch.device) -> str:
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


# --- the loop -------------------------------------------------------------------------------------

def _derived_seed(*parts: Any) -> int:
    """A 63-bit seed from parts; random.Random hashes a str seed with SHA-512 (stable across runs)."""
    return random.Random(":".join(map(str, parts))).getrandbits(63)


def _rng_state() -> dict:
    version, state, gauss = random.getstate()
    return {"python": {"version": version, "state": torch.tensor(state, dtype=torch.int64),
                       "gauss": gauss},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Progress:
    """A tqdm bar per epoch on a terminal; otherwise a plain line now and then."""

    def __init__(self, log: Log | None, enabled: bool, total: int, epoch: int, epochs: int):
        self.log, self.epoch, self.epochs, self.total = log, epoch, epochs, total
        self.bar = None
        self.start = self.last = time.perf_counter()
        self.done = 0
        if enabled and log is not None and sys.stdout.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="img", unit_scale=True, leave=False, dynamic_ncols=True,
                            desc=f"epoch {epoch}/{epochs}", file=sys.stdout)

    def update(self, images: int, loss: float | None, acc: float | None) -> None:
        self.done += images
        if self.bar is not None:
            self.bar.update(images)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{100 * acc:.2f}%", refresh=False)
            return
        now = time.perf_counter()
        if self.log is not None and loss is not None and now - self.last >= _PLAIN_EVERY_S:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            self.log(f"  epoch {self.epoch}/{self.epochs}  {self.done}/{self.total} images  "
                     f"loss {loss:.4f}  acc {100 * acc:.2f}%  {rate:.0f} img/s  eta {eta:.0f}s")

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


def _non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor in `state` holding a NaN or an infinity."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _check_weights(model: nn.Module, step: int) -> None:
    """After the last step of an epoch: the loss was finite, but the step that followed it may
    not have been (a huge or NaN learning rate), and that step's weights would be saved."""
    name = _non_finite(model.state_dict())
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

    def __init__(self, n: int, batch_size: int, dd: _Dist):
        self.indices = list(range(dd.rank, n, dd.world))
        self.batch_size = batch_size

    def __iter__(self):
        for i in range(0, len(self.indices), self.batch_size):
            yield self.indices[i:i + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)


def _evaluate(model: nn.Module, data: datasets.Data, *, device: torch.device, amp: str,
              batch_size: int, workers: int, dd: _Dist, split: str = "test",
              norm: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[float, float, int, int]:
    """(mean loss, accuracy, correct, total) over a split, summed across ranks."""
    dataset = data.test if split == "test" else data.train
    mean, std = norm if norm is not None else _norm_tensors(data, device)
    loader = _loader(dataset, _EvalBatches(len(dataset), batch_size, dd), workers,
                     device.type == "cuda", 0)
    was_training = model.training
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    with torch.no_grad(), _autocast(device, amp):
        for images, labels in datasets.batches(loader):
            x = datasets.prepare_batch(images.to(device, non_blocking=True), pixel_max=data.pixel_max,
                                       mean=mean, std=std)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels.to(device, non_blocking=True)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
    model.train(was_training)
    loss_sum, correct, total = _all_sum([loss_sum, correct, total], dd, device)
    return loss_sum / max(total, 1), correct / max(total, 1), int(correct), int(total)


def _norm_tensors(data: datasets.Data, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(data.mean, device=device), torch.tensor(data.std, device=device))


def _autocast(device: torch.device, amp: str):
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "off")


def train(spec: Any, data: str = "digits", *, epochs: int | None = None, batch_size: int | None = None,
          lr: float | None = None, momentum: float | None = None, nesterov: bool | None = None,
          weight_decay: float | None = None, milestones: tuple[float, ...] | None = None,
          gamma: float | None = None, augment: str | None = None, seed: int | None = None,
          device: str = "auto", amp: str = "auto", memory: str = "standard",
          workers: int | None = None, threads: int | None = None, sync_bn: bool = False,
          max_steps: int | None = None, out: str | os.PathLike | None = None, resume: bool = False,
          log: Log | None = None, progress: bool = True, callback: Callable[[dict], bool | None] | None = None,
          network: str | None = None, **params: Any) -> RunResult:
    """Train a spec (a `Spec`, a path, spec text or a resolved `Network`) on a data set.

    Settings left at None take the paper's recipe (`RECIPE`) or the data set's default (epochs,
    augmentation: "none", "flip", "crop" or "crop+flip"); on `resume` they take the checkpoint's,
    and one that differs from the checkpoint's is an error (it would change what the weights
    become). `milestones` are fractions of `epochs` where the learning rate is multiplied by
    `gamma`. `max_steps` ends the run after that many optimizer steps (a smoke test: the partial
    epoch is evaluated but not checkpointed). `threads` sets torch's CPU threads (small models
    on a busy machine train several times faster with 1). `log` receives the report lines
    (None: silent); `progress` adds a per-epoch bar when stdout is a terminal. `callback(row)` runs after every
    epoch with its metrics row; returning True stops training (early stopping). Under torchrun
    the processes train one DistributedDataParallel model; only rank 0 logs and writes.
    """
    started = time.perf_counter()
    net, record = _resolve_spec(spec, network, params)
    desc = datasets.describe(data)
    d.raise_if_errors(check_data(net, desc))

    dd = _setup_distributed("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    recipe = dict(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, nesterov=nesterov,
                  weight_decay=weight_decay, gamma=gamma, augment=augment, seed=seed,
                  milestones=tuple(milestones) if milestones is not None else None)
    try:
        with _run_directory(out, dd, _device(device, dd)):
            return _run(net, record, desc, dd, started, recipe=recipe, device=device, amp=amp,
                        memory=memory, workers=workers, threads=threads, sync_bn=sync_bn,
                        max_steps=max_steps, out=out, resume=resume, log=log if dd.main else None,
                        progress=progress, callback=callback)
    finally:
        if dd.created:
            dist.destroy_process_group()


def _run(net: Network, record: dict | None, desc: datasets.Description, dd: _Dist, started: float, *,
         recipe: dict, device: str, amp: str, memory: str, workers: int | None, threads: int | None,
         sync_bn: bool,
         max_steps: int | None, out, resume: bool, log: Log | None, progress: bool,
         callback) -> RunResult:
    say = log or (lambda line: None)
    run_dir = Path(out) if out is not None else None
    ckpt = None
    if resume:
        if run_dir is None:
            raise ValueError("resume=True needs out= (the run directory to continue)")
        if not (run_dir / CHECKPOINT).is_file():
            raise SpecError([Diagnostic(d.FILE_NOT_FOUND, f"no checkpoint to resume in {run_dir}", None,
                                        "run without --resume to start training there",
                                        file=str(run_dir / CHECKPOINT))])
        ckpt = read_checkpoint(run_dir / CHECKPOINT)
        _check_same_spec(ckpt, record, run_dir)
    elif run_dir is not None and (found := _existing_run(run_dir)) is not None:
        raise SpecError([Diagnostic(
            d.RUN_EXISTS, f"the run directory already holds a run ({found})", None,
            ("pass --resume to continue that run, " if found == CHECKPOINT else "")
            + "choose another --out, or omit --out to let train pick a fresh directory", file=str(run_dir))])

    # Settings: explicit, else the checkpoint's, else the recipe / the data set's default.
    given = {"data": desc.name, **recipe}
    saved = ckpt["config"] if ckpt else {}
    defaults = {**RECIPE, "epochs": desc.epochs, "augment": desc.augment}
    values, origin = {}, {}
    for key, default in defaults.items():
        if given.get(key) is not None:
            values[key], origin[key] = given[key], "set"
        elif key in saved:
            values[key], origin[key] = saved[key], "checkpoint"
        else:
            values[key], origin[key] = default, "default"
    values["milestones"] = tuple(values["milestones"])
    if origin["nesterov"] == "default" and values["momentum"] == 0:
        values["nesterov"] = False  # --momentum 0 asks for plain SGD: Nesterov needs momentum
    if ckpt:
        clashes = [f"{k} {given[k] if k != 'data' else desc.name} (checkpoint: {saved[k]})"
                   for k in _RESUME_FIXED
                   if k in saved and _norm(values[k] if k != "data" else desc.name) != _norm(saved[k])]
        if clashes:
            raise SpecError([Diagnostic(d.CONFLICT, "--resume with settings that differ from the "
                                        "checkpoint's: " + "; ".join(clashes), None,
                                        "leave them out to continue the run as it was, or start a "
                                        "new run with another --out", file=str(run_dir / CHECKPOINT))])
    _check_settings({**values, "memory": memory, "workers": workers if workers is not None else 0,
                     "max_steps": max_steps}, threads)
    if int(values["batch_size"]) == 1:
        _check_batch_of_one(net)

    dev = _device(device, dd)
    amp = _amp(amp, dev)
    from .budget import check_training  # E307 before the data set or the model is allocated
    check_training(net, batch=int(values["batch_size"]), mode=memory, device=dev)
    if threads is not None:
        torch.set_num_threads(threads)
    if sync_bn and not dd.active:
        sync_bn = False  # one process: nothing to synchronise
    data = datasets.load(desc, shape=net.input, classes=net.head.classes)
    _check_enough_data(data, int(values["batch_size"]), dd)
    workers = workers if workers is not None else (min(4, os.cpu_count() or 1)
                                                   if desc.kind == "folder" and dev.type == "cuda" else 0)
    config = Config(data=desc.name, epochs=int(values["epochs"]), batch_size=int(values["batch_size"]),
                    lr=float(values["lr"]), momentum=float(values["momentum"]),
                    nesterov=bool(values["nesterov"]), weight_decay=float(values["weight_decay"]),
                    milestones=tuple(float(m) for m in values["milestones"]), gamma=float(values["gamma"]),
                    augment=values["augment"], seed=int(values["seed"]), device=str(dev), amp=amp,
                    memory=memory, workers=workers, sync_bn=sync_bn, max_steps=max_steps)
    _report(say, net, record, data, config, origin, dd, run_dir, ckpt)

    # Model, optimizer, schedule. Every rank seeds alike, so initial weights agree (DDP would
    # broadcast rank 0's anyway); dropout then draws from a per-rank stream.
    from .compiler import build_model
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = build_model(net, memory=memory).to(dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(_derived_seed(config.seed, "rank", dd.rank))
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, config.milestone_epochs(), config.gamma)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp == "fp16")
    metrics: list[dict[str, float]] = []
    start_epoch = 0
    if ckpt:
        _restore(ckpt, model, optimizer, scheduler, scaler, run_dir / CHECKPOINT)
        metrics = [dict(row) for row in ckpt["metrics"]]
        start_epoch = int(ckpt["epoch"])
        states = ckpt["rng"]
        if len(states) == dd.world:
            try:
                _set_rng_state(states[dd.rank])
            except (RuntimeError, ValueError, TypeError) as e:  # CUDA states are checked only here
                raise _checkpoint_error(run_dir / CHECKPOINT, f"invalid checkpoint: 'rng[{dd.rank}]' is not a "
                                        f"random state this machine accepts ({e})", "the file was edited") from None
        say(f"resumed from {run_dir / CHECKPOINT} after epoch {start_epoch}")
    trained = nn.parallel.DistributedDataParallel(
        model, device_ids=[dev.index] if dev.type == "cuda" else None) if dd.active else model

    mean, std = _norm_tensors(data, dev)
    if run_dir is not None and dd.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if record is not None:
            atomic_write(run_dir / "spec.dense", record["text"])
    last_checkpoint = run_dir / CHECKPOINT if ckpt else None
    stopped = None
    steps_done = 0
    curves_at = -math.inf
    for epoch in range(start_epoch + 1, config.epochs + 1):
        t0 = time.perf_counter()
        sampler = DistributedSampler(data.train, num_replicas=dd.world, rank=dd.rank, shuffle=True,
                                     seed=config.seed)
        sampler.set_epoch(epoch)
        # A last batch of one breaks BatchNorm when the final map is 1x1: drop it then.
        batches = BatchSampler(sampler, config.batch_size, drop_last=len(sampler) % config.batch_size == 1)
        loader = _loader(data.train, batches, workers, dev.type == "cuda", _derived_seed(config.seed, epoch))
        augment_rng = torch.Generator().manual_seed(_derived_seed(config.seed, "augment", epoch, dd.rank))
        limit = None if max_steps is None else max_steps - steps_done
        try:
            loss, acc, seen, steps = _train_epoch(
                trained, loader, optimizer, scaler, data, config, dev, amp, mean, std, augment_rng,
                dd, _Progress(log, progress, len(batches.sampler) * dd.world, epoch, config.epochs), limit)
        except _Diverged as e:
            raise _diverged(e, epoch, optimizer, net, last_checkpoint) from None
        steps_done += steps
        train_seconds = time.perf_counter() - t0
        lr_now = optimizer.param_groups[0]["lr"]
        test_loss, test_acc, _, _ = _evaluate(model, data, device=dev, amp=amp, batch_size=max(256, config.batch_size),
                                              workers=workers, dd=dd, norm=(mean, std))
        if not math.isfinite(test_loss):  # finite weights can still overflow the logits
            raise _diverged(_Diverged(steps, test_loss, "the test loss"), epoch, optimizer, net, last_checkpoint)
        row = {"epoch": epoch, "steps": steps, "lr": lr_now, "train_loss": loss, "train_acc": acc,
               "test_loss": test_loss, "test_acc": test_acc,
               "images_per_s": seen / max(train_seconds, 1e-9), "seconds": time.perf_counter() - t0}
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
        elif callback is not None and _agree(bool(callback(dict(row))), dd, dev):
            stopped = "callback"
        if run_dir is not None:
            # Every rank takes part in gathering the RNG states; only rank 0 writes.
            rng = _gather_rng(dd) if not partial else []
            if dd.main:
                if not partial:
                    _save_checkpoint(run_dir / CHECKPOINT, model, optimizer, scheduler, scaler, epoch,
                                     metrics, config, record, data, net, rng)
                    last_checkpoint = run_dir / CHECKPOINT
                _write_metrics(run_dir / METRICS, metrics)
                # Drawing costs ~0.3 s: with sub-second epochs, redraw at most every _CURVES_EVERY_S.
                if epoch == config.epochs or stopped or time.perf_counter() - curves_at >= _CURVES_EVERY_S:
                    from .plots import write_curves
                    write_curves(metrics, run_dir / CURVES, title=f"{net.name} on {desc.name}")
                    curves_at = time.perf_counter()
        if dd.active:
            dist.barrier()
        if stopped:
            break

    seconds = time.perf_counter() - started
    if metrics:
        say(f"done: test accuracy {100 * metrics[-1]['test_acc']:.2f}% after epoch {metrics[-1]['epoch']} "
            f"in {seconds:.1f}s" + (f"; run directory {run_dir}" if run_dir is not None else ""))
    return RunResult(network=net.name, data=desc.name, config=config, metrics=tuple(metrics),
                     model=model.eval(), run_dir=run_dir, checkpoint=last_checkpoint, seconds=seconds,
                     stopped=stopped)


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _agree(flag: bool, dd: _Dist, device: torch.device) -> bool:
    """Rank 0's decision, so every rank leaves the loop together."""
    if not dd.active:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def _gather_rng(dd: _Dist) -> list[dict]:
    state = _rng_state()
    if not dd.active:
        return [state]
    states: list[Any] = [None] * dd.world
    dist.all_gather_object(states, state)
    return states


def _check_same_spec(ckpt: dict, record: dict | None, run_dir: Path) -> None:
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


def _train_epoch(model, loader, optimizer, scaler, data, config: Config, device, amp, mean, std,
                 augment_rng, dd: _Dist, bar: _Progress, limit: int | None):
    """One pass over the training split; returns (mean loss, accuracy, images, steps), all ranks."""
    model.train()
    # Sums stay on the device; a host sync (needed for the bar and the finiteness check) happens
    # every step on the CPU, where it is free, and every `sync` steps on a GPU.
    sync = 1 if device.type == "cpu" else 25
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    bad_value = torch.zeros((), dtype=torch.float32, device=device)
    seen = steps = 0
    try:
        for step, (images, labels) in enumerate(datasets.batches(loader), start=1):
            if limit is not None and steps >= limit:
                break
            x = datasets.prepare_batch(images.to(device, non_blocking=True), pixel_max=data.pixel_max,
                                       mean=mean, std=std, augment=config.augment, generator=augment_rng)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels.to(device, non_blocking=True)
            with _autocast(device, amp):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                value = loss.detach()
                fresh = (first_bad < 0) & ~torch.isfinite(value)
                first_bad = torch.where(fresh, torch.tensor(step, device=device), first_bad)
                bad_value = torch.where(fresh, value.float(), bad_value)
                loss_sum += value.double() * len(y)
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
    total_loss, total_correct, total_seen = _all_sum([float(loss_sum), float(correct), seen], dd, device)
    return total_loss / max(total_seen, 1), total_correct / max(total_seen, 1), int(total_seen), steps


def _check_finite(first_bad: torch.Tensor, bad_value: torch.Tensor, dd: _Dist, device) -> None:
    never = 1 << 62
    step = torch.where(first_bad < 0, torch.tensor(never, device=device), first_bad)
    if dd.active:
        step = step.clone()
        dist.all_reduce(step, op=dist.ReduceOp.MIN)
    if int(step) < never:
        raise _Diverged(int(step), float(bad_value) if int(first_bad) >= 0 else float("nan"))


def _restore(ckpt: dict, model, optimizer, scheduler, scaler, path: Path) -> None:
    """Load a validated checkpoint's states; one that does not fit this model is E908, not a crash."""
    from .compiler import load_weights
    load_weights(model, ckpt["model"])
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise _checkpoint_error(path, f"invalid checkpoint: its optimizer state does not fit the model ({e})",
                                "the file was edited, or written for another spec") from None


def _save_checkpoint(path: Path, model, optimizer, scheduler, scaler, epoch: int, metrics, config: Config,
                     record: dict | None, data: datasets.Data, net: Network, rng: list[dict]) -> None:
    bad = _non_finite(model.state_dict())
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
                 "pixel_max": data.pixel_max, "mean": list(data.mean), "std": list(data.std)},
        "torch": str(torch.__version__),  # TorchVersion itself does not load with weights_only
    }
    crc = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(True)  # read_checkpoint checks every record's CRC-32
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    finally:
        torch.serialization.set_crc32_options(crc)


def _write_metrics(path: Path, metrics: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in metrics:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, buf.getvalue())


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def _epoch_line(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  lr {row['lr']:.4g}  "
            f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%  "
            f"test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:.2f}%  "
            f"{row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s")


def _report(say: Log, net: Network, record: dict | None, data: datasets.Data, config: Config,
            origin: dict, dd: _Dist, run_dir: Path | None, ckpt: dict | None) -> None:
    """Every setting, and where it came from, before the first step."""
    def why(key: str, default_reason: str) -> str:
        return {"set": "", "checkpoint": "  (from the checkpoint)"}.get(origin[key], f"  ({default_reason})")

    source = f" ({record['source']})" if record else ""
    shape = "x".join(map(str, data.shape))
    say(f"training {net.name}{source} on {data.name}: {len(data.train)} training and "
        f"{len(data.test)} test images of {shape}, {data.classes} classes")
    milestones = ", ".join(str(m) for m in config.milestone_epochs())
    fmt = lambda v: ", ".join(f"{x:.4f}" for x in v)  # noqa: E731
    rows = [
        ("epochs", str(config.epochs), why("epochs", data.description.epochs_why)),
        ("batch size", str(config.batch_size) + (f" per process ({config.batch_size * dd.world} in all)"
                                                 if dd.active else ""), why("batch_size", "paper")),
        ("learning rate", f"{config.lr:g}", why("lr", "paper")),
        ("schedule", f"×{config.gamma:g} after epochs {milestones} "
                     f"({', '.join(f'{100 * m:g}%' for m in config.milestones)} of the epochs)",
         why("milestones", "paper") if origin["milestones"] != "set" else why("gamma", "paper")),
        ("optimizer", f"SGD, {'Nesterov ' if config.nesterov else ''}momentum {config.momentum:g}, "
                      f"weight decay {config.weight_decay:g}",
         "  (paper)" if all(origin[k] == "default" for k in ("momentum", "nesterov", "weight_decay")) else ""),
        ("augmentation", config.augment, why("augment", f"default for {data.description.kind}")),
        ("normalisation", f"mean ({fmt(data.mean)}), std ({fmt(data.std)})", "  (of the training images)"),
        *([("resize", data.resized, "  (folder images to the spec's input)")] if data.resized else []),
        ("seed", str(config.seed), why("seed", "default")),
        ("device", config.device + (f" ×{dd.world} processes" if dd.active else ""), ""),
        ("precision", "float32" if config.amp == "off" else f"autocast {config.amp}", ""),
        ("memory", config.memory, ""),
        ("workers", str(config.workers), ""),
        ("threads", str(torch.get_num_threads()), "  (CPU intra-op)" if config.device == "cpu" else ""),
    ]
    if config.sync_bn:
        rows.append(("batch norm", "synchronised across processes", ""))
    if config.max_steps is not None:
        rows.append(("max steps", str(config.max_steps), "  (smoke test)"))
    rows.append(("run directory", str(run_dir) if run_dir is not None else "none (nothing is saved)", ""))
    width = max(len(name) for name, _, _ in rows)
    for name, value, note in rows:
        say(f"  {name:<{width}}  {value}{note}")


# --- evaluation ----------------------------------------------------------------------------------

def evaluate(checkpoint: str | os.PathLike, data: str | None = None, *, split: str = "test",
             batch_size: int = 256, device: str = "auto", amp: str = "auto",
             workers: int | None = None) -> EvalResult:
    """Rebuild the model from a checkpoint alone and measure it on a data set (default: the one
    it was trained on), normalised with the training run's statistics."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', not {split!r}")
    _check_settings({"batch_size": batch_size, **({"workers": workers} if workers is not None else {})}, None)
    ckpt = read_checkpoint(checkpoint)
    if ckpt["spec"] is not None:  # E307 before building: a checkpoint may carry a spec too large here
        from .budget import check_evaluation
        check_evaluation(spec_from_record(ckpt["spec"]).network, batch=batch_size, device=device)
    model, spec = _model_from_checkpoint(ckpt, Path(checkpoint), "standard")
    net = spec.network
    desc = datasets.describe(data or ckpt["data"]["name"])
    d.raise_if_errors(check_data(net, desc))
    dd = _setup_distributed("cpu" if device == "cpu" or not torch.cuda.is_available() else "cuda")
    try:
        dev = _device(device, dd)
        amp = _amp(amp, dev)
        loaded = datasets.load(desc, shape=net.input, classes=net.head.classes)
        saved = ckpt["data"]
        # The statistics the model was trained with, not the evaluation data's own.
        loaded = replace(loaded, mean=tuple(saved["mean"]), std=tuple(saved["std"]),
                         pixel_max=float(saved["pixel_max"])) if saved["kind"] == desc.kind else loaded
        model = model.to(dev)
        if dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        loss, acc, correct, total = _evaluate(model, loaded, device=dev, amp=amp, batch_size=batch_size,
                                              workers=workers or 0, dd=dd, split=split)
    finally:
        if dd.created:
            dist.destroy_process_group()
    return EvalResult(loss=loss, accuracy=acc, correct=correct, total=total, network=net.name,
                      data=desc.name, epoch=int(ckpt["epoch"]))


def default_run_dir(network: str, data: str, *, resume: bool, root: str | os.PathLike = "runs") -> Path:
    """runs/NAME-DATA, or NAME-DATA-2, -3 ... when taken (holding anything: a finished run, a run
    in progress, a smoke test's metrics); with resume, the newest that has a checkpoint."""
    kind = datasets.describe(data).kind
    base = Path(root) / f"{network}-{kind}"
    taken = [base] + sorted(Path(root).glob(f"{network}-{kind}-*"))
    if resume:
        with_ckpt = [p for p in taken if (p / CHECKPOINT).is_file()]
        return max(with_ckpt, key=lambda p: (p / CHECKPOINT).stat().st_mtime) if with_ckpt else base
    candidates = (base if i == 1 else Path(root) / f"{network}-{kind}-{i}" for i in itertools.count(1))
    return next(p for p in candidates if not _holds_anything(p))


def _holds_anything(path: Path) -> bool:
    try:
        return next(path.iterdir(), None) is not None
    except FileNotFoundError:
        return False
    except OSError:  # a file, or unreadable: not a directory to train into
        return True
