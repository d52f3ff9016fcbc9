"""Atomic writes: whole files or nothing, with the permissions an ordinary write gives."""

from __future__ import annotations

import os
import stat

import pytest

from densedsl.core.diagnostics import SpecError
from densedsl.core.files import atomic_path, atomic_write


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "b.bin") as tmp:
            open(tmp, "wb").write(b"y")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.txt") == 0o644 == mode(tmp_path / "b.bin")


def test_rewriting_keeps_an_existing_files_mode(tmp_path):
    target = tmp_path / "spec.dense"
    target.write_text("old")
    os.chmod(target, 0o640)
    atomic_write(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "wb").write(b"half")
            raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_unwritable_directory_is_a_diagnostic(tmp_path):
    with pytest.raises(SpecError) as e:
        atomic_write(tmp_path / "missing" / "x.txt", "x")
    assert e.value.diagnostics[0].code == "E905"


# --- links, non-regular files, temporaries --------------------------------------------------------

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from densedsl import cli  # noqa: E402
from densedsl.core.files import check_writable  # noqa: E402

UNFORMATTED = "network t {input 3x16x16\n stem { conv 8 kernel=3 }\n dense layers=1 growth=2\n head classes=2 }\n"


def codes(exc) -> list[str]:
    return [x.code.code for x in exc.value.diagnostics]


def temporaries(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".densedsl-tmp-" in p.name)


def test_fmt_write_through_a_symlink_formats_the_target_and_keeps_the_link(tmp_path, capsys):
    real = tmp_path / "real.dense"
    real.write_text(UNFORMATTED)
    os.chmod(real, 0o640)
    link = tmp_path / "link.dense"
    link.symlink_to("real.dense")
    assert cli.main(["fmt", "--write", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == "real.dense"
    assert real.read_text() != UNFORMATTED and cli.main(["fmt", "--check", str(real)]) == 0
    assert mode(real) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.dense", "real.dense"]


def test_fmt_write_keeps_hard_links(tmp_path, capsys):
    first = tmp_path / "a.dense"
    first.write_text(UNFORMATTED)
    os.chmod(first, 0o604)
    second = tmp_path / "b.dense"
    os.link(first, second)
    assert cli.main(["fmt", "--write", str(first)]) == 0
    assert os.stat(first).st_ino == os.stat(second).st_ino and os.stat(first).st_nlink == 2
    assert second.read_text() == first.read_text() != UNFORMATTED
    assert mode(first) == 0o604
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dense", "b.dense"]


def test_atomic_path_writes_through_links_too(tmp_path):
    real = tmp_path / "real.pt"
    real.write_bytes(b"old")
    (tmp_path / "link.pt").symlink_to(real)
    os.link(real, tmp_path / "hard.pt")
    with atomic_path(tmp_path / "link.pt") as tmp:
        assert tmp.endswith(".pt")
        open(tmp, "wb").write(b"new, longer than old")
    assert (tmp_path / "link.pt").is_symlink()
    assert real.read_bytes() == (tmp_path / "hard.pt").read_bytes() == b"new, longer than old"
    with atomic_path(tmp_path / "hard.pt") as tmp:   # shorter: the old tail must go
        open(tmp, "wb").write(b"x")
    assert real.read_bytes() == b"x" and os.stat(real).st_nlink == 2


def _null_device(directory):
    """A character device like /dev/null but inside `directory`, so that a broken writer in a
    test run as root replaces this node, never the real /dev/null."""
    node = directory / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, AttributeError, OSError):
        pytest.skip("creating a device node needs root")
    return node


@pytest.mark.parametrize("make", ["fifo", "symlink-to-fifo", "device", "symlink-to-device"])
def test_non_regular_outputs_are_refused_and_left_alone(tmp_path, make):
    special = tmp_path / "pipe"
    if "fifo" in make:
        os.mkfifo(special)
    else:
        special = _null_device(tmp_path)
    kind = stat.S_IFMT(os.stat(special).st_mode)
    target = special
    if make.startswith("symlink"):
        target = tmp_path / "out.onnx"
        target.symlink_to(special)
    for write in (lambda: atomic_write(target, "x"), lambda: atomic_path(target).__enter__()):
        with pytest.raises(SpecError) as e:
            write()
        assert codes(e) == ["E912"]
    assert stat.S_IFMT(os.stat(special).st_mode) == kind
    assert target.is_symlink() == make.startswith("symlink")
    assert temporaries(tmp_path) == []


def test_dev_null_is_refused_before_any_work():
    """Decided: no device is an output (an atomic replace as root would turn /dev/null into a
    plain file); `densedsl check` tests a spec without output. Only checked, never written."""
    with pytest.raises(SpecError) as e:
        check_writable(os.devnull)
    assert codes(e) == ["E912"] and "device" in e.value.diagnostics[0].message


def test_compile_refuses_a_fifo_output_before_building(tmp_path, capsys):
    spec = tmp_path / "t.dense"
    spec.write_text(UNFORMATTED)
    fifo = tmp_path / "out.pt"
    os.mkfifo(fifo)
    assert cli.main(["compile", str(spec), "-o", str(fifo)]) == 1
    assert "error[E912]" in capsys.readouterr().err and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_directory_output_is_e902(tmp_path):
    (tmp_path / "out.dot").mkdir()
    with pytest.raises(SpecError) as e:
        atomic_write(tmp_path / "out.dot", "x")
    assert codes(e) == ["E902"]


def test_temporaries_are_named_after_the_output_and_their_writer(tmp_path):
    with atomic_path(tmp_path / "model.onnx") as tmp:
        name = os.path.basename(tmp)
        assert name.startswith(f".model.onnx.densedsl-tmp-{os.getpid()}-") and name.endswith(".onnx")
        open(tmp, "wb").write(b"x")
    long = "n" * 250 + ".pt"   # the temporary's name must still fit in 255 bytes
    atomic_write(tmp_path / long, "x")
    assert (tmp_path / long).read_text() == "x" and temporaries(tmp_path) == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_next_write_removes_dead_writers_temporaries_only(tmp_path):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = tmp_path / f".x.pt.densedsl-tmp-{_dead_pid()}-abcd1234.pt"
        live = tmp_path / f".x.pt.densedsl-tmp-{alive.pid}-abcd1234.pt"
        other = tmp_path / f".y.pt.densedsl-tmp-{_dead_pid()}-abcd1234.pt"   # another output's
        odd = tmp_path / ".x.pt.densedsl-tmp-notapid.pt"
        for p in (dead, live, other, odd):
            p.write_bytes(b"")
        atomic_write(tmp_path / "x.pt", b"data")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, odd.name, "x.pt"])
    finally:
        alive.kill()
        alive.wait()


_SLOW_WRITER = """
import sys, time
from densedsl.core.files import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    open(tmp, "wb").write(b"half")
    print(tmp, flush=True)
    time.sleep(60)
"""


def test_sigkill_mid_write_leaves_a_temporary_the_next_write_removes(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    writer = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    tmp = writer.stdout.readline().strip()
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    assert temporaries(tmp_path) == [os.path.basename(tmp)] and target.read_bytes() == b"old"
    atomic_write(target, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"] and target.read_bytes() == b"new"


@pytest.mark.slow
def test_sigkill_during_compile_onnx(tmp_path):
    """The real thing: kill `densedsl compile -o x.onnx` while the exporter writes."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    spec = tmp_path / "t.dense"
    spec.write_text(UNFORMATTED)
    out = tmp_path / "x.onnx"
    compile_ = subprocess.Popen([sys.executable, "-m", "densedsl", "compile", str(spec), "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not temporaries(tmp_path) and compile_.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    compile_.send_signal(signal.SIGKILL)
    compile_.wait()
    left = temporaries(tmp_path)
    assert left and all(name.startswith(".x.onnx.densedsl-tmp-") for name in left)
    assert not out.exists()
    atomic_write(out, b"next write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.dense", "x.onnx"]


def test_a_failed_in_place_rewrite_keeps_the_complete_temporary(tmp_path, monkeypatch):
    import errno

    import densedsl.core.files as files

    def disk_full(tmp, real):
        with open(real, "r+b") as f:
            f.write(b"ha")
        raise OSError(errno.ENOSPC, "No space left on device")

    first = tmp_path / "a.dense"
    first.write_text("old contents")
    os.link(first, tmp_path / "b.dense")
    monkeypatch.setattr(files, "_copy_into", disk_full)
    with pytest.raises(SpecError) as e:
        atomic_write(first, "new contents")
    assert codes(e) == ["E905"] and "No space left" in e.value.diagnostics[0].message
    [kept] = temporaries(tmp_path)
    assert kept in e.value.diagnostics[0].hint and (tmp_path / kept).read_text() == "new contents"
