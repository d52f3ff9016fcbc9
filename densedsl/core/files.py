"""Reading spec files and writing outputs atomically, with I/O failures as diagnostics."""

from __future__ import annotations

import errno
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Literal

from . import diagnostics as d
from .source import Source

_MAX_BYTES = 16 * 1024 * 1024  # a spec is a few hundred bytes; refuse to slurp a disk image


def require_regular(path: str | os.PathLike, what: str = "file") -> None:
    """Refuse a FIFO, socket or device (E912) before anything opens it: reading one blocks forever
    or never ends. Missing files and directories pass through, for the caller's own errors."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    raise d.SpecError([d.Diagnostic(d.NOT_REGULAR, f"the {what} is {kind}, not a regular file", None,
                                    f"pass a regular {what}", file=str(path))])


def read_source(path: str | os.PathLike) -> Source:
    """Read a spec file as UTF-8 text, or raise SpecError with an E9xx diagnostic."""
    name = str(path)
    p = Path(path)

    def fail(code: d.Code, message: str, hint: str | None = None) -> "d.SpecError":
        return d.SpecError([d.Diagnostic(code, message, None, hint, file=name)])

    require_regular(p, "spec file")
    if p.is_dir():
        raise fail(d.IS_DIRECTORY, "is a directory, not a spec file",
                   f"pass the spec files inside it, e.g. {name.rstrip('/')}/*.dense")
    try:
        with open(p, "rb") as f:
            data = f.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        raise fail(d.FILE_NOT_FOUND, "no such file", "check the path; spec files end in .dense") from None
    except OSError as e:
        raise fail(d.CANNOT_READ, f"cannot read the file: {e.strerror or e}") from None
    if len(data) > _MAX_BYTES:
        raise fail(d.CANNOT_READ, f"the file is larger than {_MAX_BYTES // (1024 * 1024)} MiB; "
                   "a spec is a short text file")
    if b"\x00" in data:
        raise fail(d.NOT_UTF8, "the file is binary (it contains NUL bytes), not a spec",
                   "spec files are UTF-8 text ending in .dense")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise fail(d.NOT_UTF8, f"the file is not UTF-8 text (byte 0x{data[e.start]:02x} "
                   f"at offset {e.start}, line {line})", "save the file as UTF-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return Source.from_text(text, name)


# --- writing outputs ---------------------------------------------------------------------------
#
# Every output goes through `atomic_write` or `atomic_path`, and both follow one set of rules:
#
# - The bytes go to a temporary file beside the output, named `.NAME.densedsl-tmp-PID-XXXXXXXX`
#   (recognisable, and carrying the writer's PID). Only a complete temporary is published.
# - A symbolic link is written through: the real file is replaced, the link stays a link.
# - A file with several hard links is rewritten in place (same inode), so every name sees the new
#   contents. The trade-off: that copy is not atomic; if it fails half-way (a full disk) the
#   complete output is still in the temporary, and the error names it.
# - Anything that is not a regular file (a FIFO, a socket, a device such as /dev/null, a
#   directory) is refused before any work, never replaced: E912 (E902 for a directory). Writing
#   to /dev/null is refused too: an atomic replace would turn the device into a plain file, and
#   writing into a device is not an atomic write; `densedsl check` is the way to test a spec.
# - A temporary left by a killed writer (its PID no longer runs) is removed by the next write to
#   the same output.

_TMP_MARK = ".densedsl-tmp-"
_TMP_NAME_BYTES = 96    # of the output's name kept in a temporary's name (names end at 255 bytes)
_TMP_SUFFIX_CHARS = 16  # writers pick the format from the suffix (.onnx, .png); longer ones are dropped


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, before any work, an output densedsl must not replace (E912, E902; see above)."""
    _Target(path)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` as a whole or not at all (see the rules above); SpecError E9xx."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    target = _Target(path)
    tmp = target.temporary()
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY), "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        target.publish(tmp)
    except OSError as e:
        target.discard(tmp)
        raise target.cannot_write(e) from None
    except BaseException:
        target.discard(tmp)
        raise


def atomic_path(path: str | os.PathLike):
    """Context manager yielding a temporary path beside `path`; published onto it on success.

    For writers that insist on a file name (torch.save, onnx export, graphviz, matplotlib). The
    temporary keeps the output's suffix, so writers that read the format off it still work.
    """
    return _AtomicPath(path)


class _AtomicPath:
    def __init__(self, path: str | os.PathLike):
        self.path = path
        self.target: _Target | None = None
        self.tmp: str | None = None

    def __enter__(self) -> str:
        self.target = _Target(self.path)   # refuses a FIFO or device before the writer's work
        self.tmp = self.target.temporary()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        assert self.target is not None and self.tmp is not None
        if exc_type is not None:
            full = _full_disk(exc, self.tmp)
            _remove_quietly(self.tmp)
            if full is not None:
                raise self.target.cannot_write(full) from None
            return False
        try:
            _fsync_file(self.tmp)
            self.target.publish(self.tmp)
        except OSError as e:
            self.target.discard(self.tmp)
            raise self.target.cannot_write(e) from None
        except BaseException:
            self.target.discard(self.tmp)
            raise
        return False


class _Target:
    """An output path, resolved through symbolic links and checked to be writable over."""

    def __init__(self, path: str | os.PathLike):
        self.shown = str(path)
        self.kept: str | None = None   # a temporary that holds the only complete copy
        try:
            self.real = Path(os.path.realpath(path))
        except (OSError, ValueError) as e:
            raise self.cannot_write(e) from None
        self.check()

    def check(self) -> os.stat_result | None:
        """The real file's status (None when it does not exist yet), or SpecError when it is
        something densedsl must not replace."""
        try:
            st = os.stat(self.real)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise self.cannot_write(e) from None
        if stat.S_ISDIR(st.st_mode):
            raise d.SpecError([d.Diagnostic(d.IS_DIRECTORY, "the output is a directory, not a file",
                                            None, "name a file inside it", file=self.shown)])
        if not stat.S_ISREG(st.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                    else "not a regular file")
            shown = "" if str(self.real) == os.path.abspath(self.shown) else f" ({self.real})"
            raise d.SpecError([d.Diagnostic(
                d.NOT_REGULAR, f"the output{shown} is {kind}; densedsl writes only regular files "
                "and never replaces anything else", None,
                "name a regular file (to test a spec without keeping an output, use `densedsl check`)",
                file=self.shown)])
        return st

    def temporary(self) -> str:
        """A new empty temporary beside the real file, after removing stale ones."""
        directory = self.real.parent
        prefix = _tmp_prefix(self.real.name)
        _remove_stale(directory, prefix)
        suffix = self.real.suffix if len(self.real.suffix) <= _TMP_SUFFIX_CHARS else ""
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{prefix}{os.getpid()}-", suffix=suffix)
        except OSError as e:
            raise self.cannot_write(e, "check that the directory exists and is writable") from None
        os.close(fd)
        return tmp

    def publish(self, tmp: str) -> None:
        """Make the complete temporary the output (rename, or in-place copy for hard links)."""
        st = self.check()   # again: the path may have changed while the writer worked
        if st is not None and st.st_nlink > 1:
            try:
                _copy_into(tmp, self.real)
            except OSError as e:
                self.kept = tmp
                raise d.SpecError([d.Diagnostic(
                    d.CANNOT_WRITE, f"cannot rewrite the hard-linked file in place: {e.strerror or e}",
                    None, f"the complete output is in {tmp}", file=self.shown)]) from None
            _remove_quietly(tmp)
            return
        os.chmod(tmp, stat.S_IMODE(st.st_mode) if st is not None else _default_mode())
        os.replace(tmp, self.real)

    def discard(self, tmp: str) -> None:
        """Remove a temporary after a failure, unless it holds the only complete output."""
        if tmp != self.kept:
            _remove_quietly(tmp)

    def cannot_write(self, e: BaseException, hint: str | None = None) -> d.SpecError:
        reason = getattr(e, "strerror", None) or e
        return d.SpecError([d.Diagnostic(d.CANNOT_WRITE, f"cannot write the file: {reason}", None,
                                         hint, file=self.shown)])


_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_PROBE_BYTES = 64 * 1024


def _full_disk(exc: BaseException | None, tmp: str) -> OSError | None:
    """Whether a writer failed because the disk is full or the file hit a size limit: the
    OSError saying so, else None (the writer's own error stands).

    Python writers raise that OSError (or chain it: torch.save into a file object); torch.save
    to a path writes through C++ streams and says only "file write failed", so then the disk
    itself is asked, by appending a few blocks to the failed temporary (removed next)."""
    if not isinstance(exc, Exception):
        return None  # Ctrl-C, SystemExit: nothing to ask the disk
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            return exc if exc.errno in _FULL else None
        exc = exc.__cause__ or exc.__context__
    try:
        with open(tmp, "ab") as f:
            f.write(bytes(_PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e if e.errno in _FULL else None
    return None


def output_failure(e: OSError) -> d.SpecError | None:
    """E905 for a full disk or a file-size limit that reached the command line (None for any
    other OSError: a bug). Every file is written through this module, which reports its own
    failures, so what gets here unnamed is standard output (`> /dev/full`, a full disk). Then
    standard output becomes /dev/null, so the interpreter's last flush does not fail again."""
    if isinstance(e, BrokenPipeError) or e.errno in _FULL:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass  # not a real file (a test's capture): nothing will flush it at exit
    if e.errno not in _FULL:
        return None
    return d.SpecError([d.Diagnostic(d.CANNOT_WRITE, f"cannot write the output: {e.strerror or e}", None,
                                     "free some space, or write to another disk", file=e.filename or "<stdout>")])


def _tmp_prefix(name: str) -> str:
    """`.NAME.densedsl-tmp-`, NAME cut to a length every file system takes."""
    short = os.fsdecode(os.fsencode(name)[:_TMP_NAME_BYTES])
    return f".{short}{_TMP_MARK}"


def _remove_stale(directory: Path, prefix: str) -> None:
    """Remove the temporaries of earlier writes to this output whose writer no longer runs
    (killed mid-write: SIGKILL, OOM killer, power loss)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _running(int(pid)):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
        except OSError:
            pass


def _running(pid: int) -> bool:
    """Whether process `pid` exists (a zombie counts); unknown means yes, to keep its file."""
    if os.name == "nt" or pid <= 0:
        return True   # os.kill on Windows would terminate the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _copy_into(tmp: str, real: Path) -> None:
    """Overwrite `real`'s contents with `tmp`'s, keeping its inode (hence links, owner, mode)."""
    with open(tmp, "rb") as src, open(real, "r+b") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
        dst.truncate()
        dst.flush()
        os.fsync(dst.fileno())


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _default_mode() -> int:
    """The mode an ordinary open() would give a new file (mkstemp creates 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
