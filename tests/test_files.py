"""Atomic writes: whole files or nothing, with the permissions an ordinary write gives."""

from __future__ import annotations

import os
import stat

import pytest

from densedsl.diagnostics import SpecError
from densedsl.files import atomic_path, atomic_write


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
