"""Reading spec files and writing outputs atomically, with I/O failures as diagnostics."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

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


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write to a temporary file beside `path`, then rename: a failure leaves no partial file."""
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".",
                                   prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise d.SpecError([d.Diagnostic(d.CANNOT_WRITE, f"cannot write the file: {e.strerror or e}",
                                        None, "check that the directory exists and is writable",
                                        file=str(path))]) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        _publish_mode(tmp, target)
        os.replace(tmp, target)
    except OSError as e:
        _remove_quietly(tmp)
        raise d.SpecError([d.Diagnostic(d.CANNOT_WRITE, f"cannot write the file: {e.strerror or e}",
                                        None, file=str(path))]) from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_path(path: str | os.PathLike):
    """Context manager yielding a temporary path beside `path`; renamed onto it on success.

    For writers that insist on a file name (torch.save, onnx export, graphviz).
    """
    return _AtomicPath(Path(path))


class _AtomicPath:
    def __init__(self, target: Path):
        self.target = target
        self.tmp: str | None = None

    def __enter__(self) -> str:
        try:
            fd, self.tmp = tempfile.mkstemp(dir=self.target.parent if str(self.target.parent) else ".",
                                            prefix=f".{self.target.name}.", suffix=self.target.suffix)
        except OSError as e:
            raise d.SpecError([d.Diagnostic(d.CANNOT_WRITE, f"cannot write the file: {e.strerror or e}",
                                            None, "check that the directory exists and is writable",
                                            file=str(self.target))]) from None
        os.close(fd)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.tmp is not None
        if exc_type is None:
            try:
                _publish_mode(self.tmp, self.target)
                os.replace(self.tmp, self.target)
            except OSError as e:
                _remove_quietly(self.tmp)
                raise d.SpecError([d.Diagnostic(d.CANNOT_WRITE, f"cannot write the file: {e.strerror or e}",
                                                None, file=str(self.target))]) from None
        else:
            _remove_quietly(self.tmp)
        return False


def _publish_mode(tmp: str, target: Path) -> None:
    """mkstemp creates 0600 files; give the output the mode an ordinary write would."""
    try:
        mode = target.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
