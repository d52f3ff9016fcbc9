"""Run directories: where a run writes, the lock that keeps a second run out, and the name a new
run gets.

A run directory holds `checkpoint.pt` (every epoch, atomically), `metrics.csv`, `curves.png` and
`spec.dense` (a copy of the spec text). A run holds an exclusive lock on it (`RUN_DIR/.lock`,
fcntl.flock) for its whole life, so a second run into the same directory is refused (E910)
instead of overwriting the first run's results; the kernel drops the lock when the process dies,
so even a SIGKILLed run leaves no stale lock.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import stat
from contextlib import contextmanager
from pathlib import Path

import torch

from ..core import diagnostics as d
from ..core.diagnostics import Diagnostic, SpecError
from ..core.files import atomic_write
from . import datasets
from .checkpoint_schema import METRIC_FIELDS
from .checkpoints import CHECKPOINT
from .distributed import Dist, agree

METRICS = "metrics.csv"
CURVES = "curves.png"
LOCK = ".lock"

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
def run_directory(out, dd: Dist, device: torch.device):
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
    if agree(refused is not None, dd, device):
        raise refused or SpecError([Diagnostic(d.RUN_EXISTS, "rank 0 could not take the run directory",
                                               None, file=str(out))])
    try:
        yield
    finally:
        lock.release()


def existing_run(run_dir: Path) -> str | None:
    """The output of an earlier run that `run_dir` holds, if any."""
    return next((name for name in (CHECKPOINT, METRICS) if (run_dir / name).exists()), None)

def write_metrics(path: Path, metrics: list[dict]) -> None:
    buf = io.StringIO()
    # A regression's rows have their own fields (checkpoint_schema.REGRESSION_FIELDS)
    writer = csv.DictWriter(buf, fieldnames=list(metrics[0]) if metrics else METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in metrics:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, buf.getvalue())


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
