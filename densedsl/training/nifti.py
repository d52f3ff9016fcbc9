"""NIfTI volumes as a data set: `--data nifti:DIR`, read with nibabel (`pip install "densedsl[nifti]"`).

    DIR/train/labels.csv     columns file,label: a .nii or .nii.gz file beside it, its class name
    DIR/test/labels.csv      likewise (or DIR/val alone as the test split); DIR/val as well is the
                             validation split

Each volume becomes one C x D x H x W input: a 3-D volume is one channel; a 4-D one holds its
channels last, as NIfTI stores them (MONAI's EnsureChannelFirst moves them first likewise). The
file's axes are kept in its own order (i, j, k). Values are the file's, scaled by its header's
slope and intercept as nibabel reads them, as float32, and normalised per channel by the training
split's statistics like array data. The classes are the training split's labels, sorted.

Files are untrusted: each header's shape and data type are checked before any voxel is read
(E307 past `loaded.MAX_FILE_BYTES` for one volume or for the whole data set, which is held in
memory; E207 for another size than the spec's input), and reading stops at what the header
promises (a .nii.gz stream is not decompressed past it).
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ..core import diagnostics as d
from ..core import optional
from ..core.diagnostics import Diagnostic, SpecError
from ..core.files import require_regular
from . import loaded
from .loaded import TensorSet
from .tabular import read_csv

KINDS = ("nifti",)
EPOCHS = 30
SUFFIXES = (".nii", ".nii.gz")
LAYOUT = "DIR/train/labels.csv and DIR/test/labels.csv (columns file,label) beside the .nii/.nii.gz files"
_PURPOSE = "reading NIfTI volumes (--data nifti:)"


def _fail(code: d.Code, message: str, file: Path | None, hint: str | None = None) -> SpecError:
    return SpecError([Diagnostic(code, message, None, hint, file=str(file) if file is not None else "--data")])


def _size(n: int) -> str:
    return next(f"{n / 2**k:.1f} {unit}" for k, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB"), (0, "bytes"))
                if n >= 2**k or k == 0)


def is_volume(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def _nibabel() -> Any:
    return optional.require("nibabel", _PURPOSE)


def _split_dir(path: Path, split: str) -> Path | None:
    """DIR/split, or DIR/val standing in for a missing DIR/test (as folder: data)."""
    for name in (split, "val") if split == "test" else (split,):
        if (path / name / "labels.csv").exists():
            return path / name
    return None


def _entries(split_dir: Path) -> list[tuple[Path, str, str]]:
    """(volume file, class name, where it is named) of each row of split_dir/labels.csv."""
    table = read_csv(split_dir / "labels.csv", "labels file")
    where = split_dir / "labels.csv"
    if "file" not in table.header or "label" not in table.header:
        raise _fail(d.MISSING, f"the header is {','.join(table.header)[:120]}; it needs the columns file and "
                    "label", where, "write a header line `file,label`, then one row per volume")
    column_file, column_label = table.header.index("file"), table.header.index("label")
    entries = []
    for i, row in enumerate(table.rows):
        name, label = row[column_file].strip(), row[column_label].strip()
        relative = PurePosixPath(name.replace("\\", "/"))
        if not name or relative.is_absolute() or ".." in relative.parts or not is_volume(Path(name)):
            raise _fail(d.BAD_FILE, f"{table.where(i)}: '{name[:80]}' is not a .nii or .nii.gz file beside "
                        "labels.csv", where, "name each volume by its path relative to the labels file")
        if not label:
            raise _fail(d.BAD_FILE, f"{table.where(i)}: '{name[:80]}' has no label", where,
                        "give every volume a class name")
        entries.append((split_dir / relative, label, table.where(i)))
    if not entries:
        raise _fail(d.NO_DATA, "labels.csv names no volumes", where, f"lay the data out as {LAYOUT}")
    return entries


def classes(path: Path) -> list[str]:
    """The class names of `--data nifti:DIR` (those of its training split, sorted), reading only
    the labels files: enough to check a spec's head before a volume is read."""
    _nibabel()
    if not path.is_dir():
        raise _fail(d.FILE_NOT_FOUND, "no such directory", path, f"nifti: data sets are laid out as {LAYOUT}")
    for split in ("train", "test"):
        if _split_dir(path, split) is None:
            raise _fail(d.FILE_NOT_FOUND, f"missing {split}/labels.csv" + (" (or val/labels.csv)" if split == "test"
                                                                            else ""),
                        path / split / "labels.csv", f"nifti: data sets are laid out as {LAYOUT}")
    train = _split_dir(path, "train")
    assert train is not None
    names = sorted({label for _, label, _ in _entries(train)})
    if len(names) < 2:
        raise _fail(d.BAD_FILE, f"the training labels name {len(names)} class; a classifier needs at least 2",
                    train / "labels.csv", "label the volumes with two or more class names")
    return names


def _volume_shape(found: tuple[int, ...], rank: int) -> tuple[int, ...] | None:
    """The input shape (C, spatial...) a volume of shape `found` makes for a spec of `rank` spatial
    axes: the spatial axes alone are one channel, one more trailing axis holds the channels."""
    if len(found) == rank:
        return (1, *found)
    if len(found) == rank + 1:
        return (found[-1], *found[:-1])
    return None


class Volume:
    """One volume's image as nibabel opened it (the header only), checked against the spec."""

    def __init__(self, path: Path, where: str, shape: tuple[int, ...]):
        nib = _nibabel()
        from nibabel.filebasedimages import ImageFileError
        require_regular(path, "volume")
        if not path.is_file():
            raise _fail(d.FILE_NOT_FOUND, f"no such volume (named on {where})", path,
                        "check the file's name and where it is")
        try:
            self.image = nib.load(path, mmap=False)  # reads the header; the voxels wait for _read
        except (ImageFileError, OSError, EOFError, ValueError) as e:
            raise _fail(d.BAD_FILE, f"cannot read the NIfTI header: {str(e).splitlines()[0][:200]}", path,
                        "write it with nibabel (nib.save) or another NIfTI-1/2 writer") from None
        if not isinstance(self.image, nib.Nifti1Image):  # Nifti2Image is one too
            raise _fail(d.BAD_FILE, f"nibabel reads it as {type(self.image).__name__}, not NIfTI", path,
                        "save it as .nii or .nii.gz (NIfTI-1 or NIfTI-2)")
        self.path = path
        found = tuple(int(n) for n in self.image.shape)
        dtype = self.image.get_data_dtype()
        # float32 as kept, and at least the file's own width while nibabel converts it
        self.bytes = math.prod(found) * max(4, dtype.itemsize)
        if self.bytes > loaded.MAX_FILE_BYTES:
            raise _fail(d.OUT_OF_MEMORY, f"the header declares {'x'.join(map(str, found))} voxels of {dtype}, "
                        f"{_size(self.bytes)} to read, more than the {_size(loaded.MAX_FILE_BYTES)} a data file may be",
                        path,
                        "crop or downsample the volume to the spec's input size")
        if dtype.kind not in "uif":
            raise _fail(d.BAD_FILE, f"the voxels are {dtype} values, not numbers densedsl reads", path,
                        "store intensities as integers or floats (RGB and complex volumes are not read)")
        made = _volume_shape(found, len(shape) - 1)
        if made != tuple(shape):
            want = "x".join(map(str, shape))
            read = f" (read as {'x'.join(map(str, made))})" if made else ""
            raise _fail(d.DATA_MISMATCH, f"the spec's input is {want} but the volume is "
                        f"{'x'.join(map(str, found))}{read}", path,
                        f"volumes of {'x'.join(map(str, shape[1:]))} (channels last when more than one), or "
                        "write the spec's input to fit; densedsl does not resample volumes")
        self.shape = tuple(shape)

    def read(self) -> torch.Tensor:
        import numpy as np
        try:
            voxels = np.asarray(self.image.dataobj, dtype=np.float32)  # the header's scaling applied
        except (OSError, EOFError, ValueError) as e:  # truncated, or a damaged gzip stream
            raise _fail(d.BAD_FILE, f"cannot read the voxels: {str(e).splitlines()[0][:200]}", self.path,
                        "the file may be truncated: write it again") from None
        if not np.isfinite(voxels).all():
            raise _fail(d.BAD_FILE, "the volume holds values that are not finite", self.path,
                        "replace NaN and infinite voxels")
        if voxels.ndim == len(self.shape):  # channels last, as NIfTI keeps them
            voxels = np.moveaxis(voxels, -1, 0)
        return torch.from_numpy(np.ascontiguousarray(voxels)).reshape(self.shape)


def load(path: Path, shape: tuple[int, ...]) -> tuple[TensorSet, TensorSet, tuple[str, ...], TensorSet | None]:
    """(train, test, class names, validation) of `--data nifti:DIR` for a spec whose input is `shape`.
    Every header is checked before any volume's voxels are read."""
    names = classes(path)
    index = {name: i for i, name in enumerate(names)}
    test_dir = _split_dir(path, "test")
    assert test_dir is not None  # classes() refused its absence
    splits = {"train": path / "train", "test": test_dir}
    if test_dir.name == "test" and (path / "val" / "labels.csv").exists():
        splits["val"] = path / "val"
    headers: dict[str, list[Volume]] = {}
    labels: dict[str, list[int]] = {}
    total = 0
    for split, split_dir in splits.items():
        entries = _entries(split_dir)
        for _, label, where in entries:
            if label not in index:
                raise _fail(d.BAD_FILE, f"{where}: class '{label[:80]}' is not among the training classes",
                            split_dir / "labels.csv", f"the training classes are: {', '.join(names)[:300]}")
        headers[split] = [Volume(file, f"{where} of {split_dir / 'labels.csv'}", shape) for file, _, where in entries]
        labels[split] = [index[label] for _, label, _ in entries]
        total += sum(h.bytes for h in headers[split])
        if total > loaded.MAX_FILE_BYTES:
            raise _fail(d.OUT_OF_MEMORY, f"the volumes' headers declare {_size(total)}, more than the "
                        f"{_size(loaded.MAX_FILE_BYTES)} a data set held in memory may use", path,
                        "use fewer or smaller volumes")
    sets = {split: TensorSet(torch.stack([h.read() for h in headers[split]]),
                             torch.tensor(labels[split], dtype=torch.int64)) for split in splits}
    return sets["train"], sets["test"], tuple(names), sets.get("val")


def volumes(files: list[Path], shape: tuple[int, ...]) -> list[Volume]:
    """The volumes `files`, their headers checked against `shape` (predict reads them in batches)."""
    return [Volume(f, "--data", shape) for f in files]
