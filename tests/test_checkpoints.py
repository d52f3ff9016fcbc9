"""Checkpoints as untrusted files: corruption (E913), crafted contents (E908), code in pickles,
FIFOs (E912). Every case must end in one diagnostic, never a KeyError, a hang or NaN training."""

from __future__ import annotations

import copy
import math
import os
import threading
import zipfile
from dataclasses import fields
from pathlib import Path

import pytest
import torch

import densedsl
from densedsl import cli
from densedsl.core.diagnostics import SpecError
from densedsl.nn import build as compiler
from densedsl.nn import weights
from densedsl.training import checkpoint_schema, datasets
from densedsl.training.train import (
    CHECKPOINT,
    Config,
    evaluate,
    model_from_checkpoint,
    read_checkpoint,
    train,
)

from networks import two_block_text  # noqa: E402

SPEC = two_block_text("t", "1x8x8")


def _codes(e: SpecError) -> list[str]:
    return [diag.code.code for diag in e.diagnostics]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One real run directory; tests copy its checkpoint and never change it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("base") / "run"
        train(SPEC, data="synthetic:32", epochs=1, batch_size=16, out=out)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture()
def saved(run) -> dict:
    return torch.load(run / CHECKPOINT, weights_only=True)


def test_a_checkpoint_train_writes_passes_every_check(run, saved):
    assert checkpoint_schema.problem_in(saved) is None
    assert read_checkpoint(run)["epoch"] == 1
    with zipfile.ZipFile(run / CHECKPOINT) as archive:  # CRCs are written, so they can be checked
        assert all(m.CRC != 0 for m in archive.infolist() if m.file_size)


def test_the_settings_rules_cover_every_config_field():
    assert set(checkpoint_schema.SETTINGS) == {f.name for f in fields(Config)}
    assert checkpoint_schema.AUGMENTATIONS == datasets.AUGMENTATIONS
    assert checkpoint_schema.MEMORY_MODES == compiler.MEMORY_MODES
    assert checkpoint_schema.DATA_KINDS == datasets.KINDS


# --- corruption: the zip records' CRC-32s ------------------------------------------------------

def _record(path: Path, pick) -> tuple[int, int]:
    """(offset in the file, length) of the data of the zip record `pick(members)` chooses."""
    with zipfile.ZipFile(path) as archive:
        member = pick(archive.infolist())
    with open(path, "rb") as f:  # the local header's name and extra field precede the data
        f.seek(member.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    return member.header_offset + 30 + name_len + extra_len, member.file_size


def _largest_tensor_record(path: Path) -> tuple[int, int]:
    return _record(path, lambda members: max((m for m in members if "/data/" in m.filename),
                                             key=lambda m: m.file_size))


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_bytes_flipped_inside_a_tensor_are_refused(run, tmp_path, where):
    start, length = _largest_tensor_record(run / CHECKPOINT)
    raw = bytearray((run / CHECKPOINT).read_bytes())
    offset = start + min(length - 1, int(where * length))
    raw[offset] ^= 0x10  # one bit: torch.load alone would load this without a word
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(raw)
    torch.load(bad, weights_only=True)  # the premise: torch does not notice
    with pytest.raises(SpecError) as e:
        read_checkpoint(bad)
    assert _codes(e.value) == ["E913"] and "CRC" in str(e.value)


def test_a_flipped_byte_in_the_pickle_and_a_truncated_file_are_refused(run, tmp_path):
    raw = bytearray((run / CHECKPOINT).read_bytes())
    start, length = _record(run / CHECKPOINT, lambda ms: next(m for m in ms if m.filename.endswith("data.pkl")))
    raw[start + length // 2] ^= 0x01
    (tmp_path / "pkl.pt").write_bytes(raw)
    (tmp_path / "cut.pt").write_bytes((run / CHECKPOINT).read_bytes()[:-200])
    for name in ("pkl.pt", "cut.pt"):
        with pytest.raises(SpecError) as e:
            read_checkpoint(tmp_path / name)
        assert _codes(e.value) == ["E913"], name


def test_weights_loaded_by_the_compiler_are_checked_too(run, tmp_path):
    start, length = _largest_tensor_record(run / CHECKPOINT)
    raw = bytearray((run / CHECKPOINT).read_bytes())
    raw[start + length // 2] ^= 0x01
    (tmp_path / "flipped.pt").write_bytes(raw)
    model = compiler.build_model(densedsl.parse(SPEC).network)
    with pytest.raises(SpecError) as e:  # compile --weights, render --heatmap --weights
        weights.load_weights(model, str(tmp_path / "flipped.pt"))
    assert _codes(e.value) == ["E913"]
    os.mkfifo(tmp_path / "fifo.pt")
    with pytest.raises(SpecError) as e:
        weights.load_weights(model, str(tmp_path / "fifo.pt"))
    assert _codes(e.value) == ["E912"]


def test_an_archive_saved_without_crcs_is_not_called_corrupt(run, tmp_path):
    state = torch.load(run / CHECKPOINT, weights_only=True)["model"]
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(state, tmp_path / "no-crc.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    weights.verify_archive(tmp_path / "no-crc.pt")  # nothing to check against: no error


def test_a_compressed_record_and_a_foreign_file_are_refused_before_loading(run, tmp_path):
    # A deflated record can expand a thousandfold; torch never writes one, so none is read.
    with zipfile.ZipFile(run / CHECKPOINT) as src, zipfile.ZipFile(tmp_path / "bomb.pt", "w") as out:
        for member in src.infolist():
            out.writestr(member, src.read(member.filename))
        out.writestr(src.infolist()[0].filename.split("/")[0] + "/data/999", bytes(8 << 20),
                     compress_type=zipfile.ZIP_DEFLATED)
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 16)
    for name, says in (("bomb.pt", "is compressed"), ("random.pt", "not a torch.save zip archive")):
        with pytest.raises(SpecError) as e:
            read_checkpoint(tmp_path / name)
        assert _codes(e.value) == ["E908"] and says in str(e.value), name


def test_eval_of_a_corrupt_checkpoint_exits_1_with_e913(run, tmp_path, capsys):
    start, length = _largest_tensor_record(run / CHECKPOINT)
    raw = bytearray((run / CHECKPOINT).read_bytes())
    for k in range(start, start + length, 97):
        raw[k] ^= 0xFF
    (tmp_path / CHECKPOINT).write_bytes(raw)
    assert cli.main(["eval", str(tmp_path)]) == 1
    assert "error[E913]" in capsys.readouterr().err


# --- crafted contents: one schema ---------------------------------------------------------------

def _set(path: str, value):
    """A mutation setting a dotted path ('data.std', 'rng.0.torch') in the checkpoint."""
    def mutate(ckpt: dict) -> None:
        *parents, last = path.split(".")
        target = ckpt
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return mutate


def _drop(path: str):
    def mutate(ckpt: dict) -> None:
        *parents, last = path.split(".")
        target = ckpt
        for key in parents:
            target = target[key]
        del target[last]
    return mutate


def _first_weight(fill: float):
    def mutate(ckpt: dict) -> None:
        next(t for t in ckpt["model"].values() if t.is_floating_point()).view(-1)[3] = fill
    return mutate


CRAFTED = [
    ("missing data entry", _drop("data"), "no entry 'data'"),
    ("missing model entry", _drop("model"), "no entry 'model'"),
    ("extra entry", _set("evil", 1), "unexpected entry 'evil'"),
    ("spec record not a dict", _set("spec", 5), "'spec' must be a dict"),
    ("spec record without text", _drop("spec.text"), "'spec' has no entry 'text'"),
    ("spec text not a string", _set("spec.text", b"network"), "'spec.text'"),
    ("zero denominator in an override", _set("spec.overrides", [["classes", {"fraction": [3, 0]}]]),
     "nonzero denominator"),
    ("override value a NaN", _set("spec.overrides", [["classes", math.nan]]), "'spec.overrides[0]'"),
    ("version a string", _set("version", "1"), "'version' must be"),
    ("version a bool", _set("version", True), "'version' must be"),
    ("epoch NaN", _set("epoch", math.nan), "'epoch' must be"),
    ("epoch past the run's epochs", _set("epoch", 7), "'epoch' must be"),
    ("std of 0", _set("data.std", [0.0]), "'data.std'"),
    ("std missing a channel", _set("data.std", []), "'data.std'"),
    ("mean NaN", _set("data.mean", [math.nan]), "'data.mean'"),
    ("pixel_max 0", _set("data.pixel_max", 0), "'data.pixel_max'"),
    ("unknown data kind", _set("data.kind", "imagenet"), "'data.kind'"),
    ("class names of another count", _set("data.class_names", ["a"]), "'data.class_names'"),
    ("network name differs from the spec's", _set("network", "other"), "'network'"),
    ("weights a list", _set("model", [1, 2]), "'model' must be"),
    ("a NaN weight", _first_weight(math.nan), "non-finite"),
    ("an infinite weight", _first_weight(math.inf), "non-finite"),
    ("config lr a string", _set("config.lr", "fast"), "'config.lr'"),
    ("config lr NaN", _set("config.lr", math.nan), "'config.lr'"),
    ("config epochs 0", _set("config.epochs", 0), "'config.epochs'"),
    ("config without seed", _drop("config.seed"), "'config' has no entry 'seed'"),
    ("config milestones NaN", _set("config.milestones", [math.nan]), "'config.milestones'"),
    ("optimizer param_groups a string", _set("optimizer.param_groups", "x"), "'optimizer.param_groups'"),
    ("optimizer lr negative", _set("optimizer.param_groups.0.lr", -1.0), "'optimizer.param_groups[0].lr'"),
    ("scheduler entry it does not have", _set("scheduler.optimizer", 1), "'scheduler'"),
    ("scheduler epoch a string", _set("scheduler.last_epoch", "x"), "'scheduler.last_epoch'"),
    ("scheduler at another epoch", _set("scheduler.last_epoch", 0), "'scheduler.last_epoch'"),
    ("scaler with a zero scale", _set("scaler", {"scale": 0.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                                 "growth_interval": 1, "_growth_tracker": 0}), "'scaler.scale'"),
    ("python RNG state cut short", _set("rng.0.python.state", torch.zeros(5, dtype=torch.int64)),
     "'rng[0].python'"),
    ("torch RNG state of the wrong size", _set("rng.0.torch", torch.zeros(7, dtype=torch.uint8)),
     "'rng[0].torch'"),
    ("rng not a list", _set("rng", {"python": 1}), "'rng'"),
    ("metrics a number", _set("metrics", 3), "'metrics'"),
    ("metrics row with a NaN loss", _set("metrics.0.train_loss", math.nan), "'metrics[0].train_loss'"),
]


@pytest.mark.parametrize("mutate, expected", [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
def test_crafted_checkpoints_are_refused_naming_the_entry(saved, tmp_path, mutate, expected):
    ckpt = copy.deepcopy(saved)
    mutate(ckpt)
    torch.save(ckpt, tmp_path / CHECKPOINT)
    with pytest.raises(SpecError) as e:
        read_checkpoint(tmp_path / CHECKPOINT)
    assert _codes(e.value) == ["E908"]
    assert expected in str(e.value) and "invalid checkpoint" in str(e.value)
    with pytest.raises(SpecError):  # the dict form is held to the same schema
        model_from_checkpoint(ckpt)


def test_crafted_checkpoints_are_refused_by_eval_and_by_resume(saved, tmp_path, capsys):
    ckpt = copy.deepcopy(saved)
    ckpt["data"]["std"] = [0.0]
    torch.save(ckpt, tmp_path / CHECKPOINT)
    assert cli.main(["eval", str(tmp_path)]) == 1
    assert "error[E908]" in capsys.readouterr().err
    with pytest.raises(SpecError) as e:
        train(SPEC, data="synthetic:32", batch_size=16, epochs=2, out=tmp_path, resume=True)
    assert _codes(e.value) == ["E908"] and "'data.std'" in str(e.value)


def test_data_record_that_contradicts_the_spec_is_refused(saved, tmp_path):
    ckpt = copy.deepcopy(saved)
    ckpt["data"]["shape"] = [1, 9, 9]  # valid on its own; not the spec's input
    torch.save(ckpt, tmp_path / CHECKPOINT)
    with pytest.raises(SpecError) as e:
        evaluate(tmp_path)
    assert _codes(e.value) == ["E908"] and "'data.shape'" in str(e.value)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"format": checkpoint_schema.FORMAT, "version": 1, "payload": _RunsCode(marker)}, tmp_path / CHECKPOINT)
    with pytest.raises(SpecError) as e:
        read_checkpoint(tmp_path / CHECKPOINT)
    assert _codes(e.value) == ["E908"] and "weights-only" in str(e.value)
    assert not marker.exists()


def test_a_fifo_given_as_checkpoint_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "ckpt.pt"
    os.mkfifo(fifo)
    outcome: list = []

    def read() -> None:
        try:
            read_checkpoint(fifo)
        except SpecError as e:
            outcome.append(_codes(e))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=20)
    if reader.is_alive():  # unblock the reader so the test process can exit
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert outcome == [["E912"]]
