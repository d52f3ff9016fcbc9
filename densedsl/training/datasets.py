"""Image classification data sets for `densedsl train`, read from files the user already has.

Nothing is downloaded: each reader names the file it expected, its format and where people
usually get it when something is missing or malformed. Every data set is a pair of splits whose
items are `uint8` images `(C, H, W)` and integer labels; scaling to [0, 1], augmentation and
normalisation happen batch-wise in `prepare_batch`, on the training device, with torch ops.

    --data digits              sklearn's bundled 8x8 digits, fixed stratified 80/20 split
    --data cifar10:DIR         CIFAR-10 "binary version" (data_batch_1..5.bin, test_batch.bin)
    --data cifar100:DIR        CIFAR-100 "binary version" (train.bin, test.bin; fine labels)
    --data mnist:DIR           MNIST IDX files (train-images-idx3-ubyte ..., optionally .gz)
    --data fashion-mnist:DIR   Fashion-MNIST, same IDX files
    --data folder:DIR          DIR/train/<class>/*.png and DIR/test/<class>/... (or DIR/val)
    --data synthetic[:N]       N (default 512) random learnable images of the spec's shape
    --data csv:FILE            tabular data (with --target COLUMN), encoded by `tabular`
    --data diabetes            sklearn's bundled regression table (see `tabular`)
    --data nifti:DIR           NIfTI volumes listed in DIR/train/labels.csv ... (see `nifti`)

Data files are untrusted: every size a header declares is checked against the file's actual
size (or, gzipped, against what decompresses, read in chunks and never past the promise) and
against `loaded.MAX_FILE_BYTES` before anything is allocated; images are checked against
`MAX_IMAGE_PIXELS` from their header before they are decoded. Every split must hold images (E208)
of the spec's input shape (E207; only folder data is resized, explicitly, to the spec's size).
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..core import diagnostics as d
from ..core.diagnostics import Diagnostic, SpecError
from ..core.files import require_regular
from . import arrays, loaded, nifti, tabular
from .loaded import Data, TensorSet

# (C, H, W) for images; (C, L), (C, D, H, W) or a vector's (F,) as well
Shape = tuple[int, ...]

KINDS = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "folder", "synthetic", "csv", "diabetes",
         "npy", "npz", "nifti")
TABULAR_KINDS = ("csv", "diabetes")  # feature vectors, read and encoded by densedsl.training.tabular
# d2l's house-price recipe trains with Adam for 100 epochs. The paper's SGD at lr 0.1 diverges on
# MLPs without normalisation (d2l_flux_mlp's 16 linear layers in a row): AdamW at 1e-3 instead.
TABULAR_RECIPE = (("optimizer", "adamw"), ("lr", 1e-3))
TABULAR_WHY = "default for tabular data, after d2l's house-price recipe"
AUGMENTATIONS = ("none", "flip", "crop", "crop+flip", "resized-crop+flip")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# Images are decoded one at a time at full size before resizing: 8192x8192 RGB is 192 MiB.
# (Pillow's own bomb check warns at 89M pixels and fails at 179M, with an exception densedsl
# would otherwise not expect.)
MAX_IMAGE_PIXELS = 8192 * 8192
MAX_SYNTHETIC = 1_000_000   # synthetic:N images; far more than a smoke test needs
_CHUNK = 1 << 22

_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_MNIST_URL = "https://yann.lecun.com/exdb/mnist/ (or the mirror https://ossci-datasets.s3.amazonaws.com/mnist/)"
_FASHION_URL = "https://github.com/zalandoresearch/fashion-mnist (the files in data/fashion)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Description:
    """What is known about a data set before reading its images (enough to check a spec)."""

    kind: str
    path: Path | None
    shape: Shape | None          # None: adapts to the spec (folder resizes, synthetic generates)
    classes: int | None          # None: taken from the spec (synthetic)
    augment: str                 # the default augmentation for this kind of data
    epochs: int                  # the default number of epochs
    epochs_why: str              # where that default comes from, printed at start
    size: int | None = None      # synthetic:N, the number of training images
    test_path: Path | None = None  # csv:TRAIN,TEST, the test file
    target: str | None = None    # csv: the column to predict (train --target)
    drop: tuple[str, ...] = ()   # tabular: columns left out of the features (train --drop)
    # Recipe settings this kind of data trains with by default instead of the paper's
    defaults: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        if self.size is not None:
            return f"{self.kind}:{self.size}"
        if self.test_path is not None:
            return f"{self.kind}:{self.path},{self.test_path}"
        return self.kind if self.path is None else f"{self.kind}:{self.path}"

    @property
    def tabular(self) -> bool:
        return self.kind in TABULAR_KINDS



# one in-memory split for images and tables alike; the name stays for the code that tests for it
ImageSet = TensorSet


def image_set(images: torch.Tensor, labels: torch.Tensor) -> TensorSet:
    """Images (or signals, or volumes: N x C x spatial) and their class indices as a TensorSet."""
    # uint8 pixels, or float32 values (arrays: signals, volumes) used as they are
    assert images.dtype in (torch.uint8, torch.float32) and 3 <= images.dim() <= 5 and len(images) == len(labels)
    return TensorSet(images, labels.to(torch.int64))


class FolderSet(Dataset):
    """Image files decoded on demand with Pillow (in DataLoader workers when there are some)."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], shape: Shape):
        self.files = tuple(files)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.shape = shape

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _read_image(self.files[i], self.shape), self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> "tuple[torch.Tensor, torch.Tensor] | BadBatch":
        try:
            images = torch.stack([_read_image(self.files[i], self.shape) for i in indices])
        except SpecError as e:
            return BadBatch(e.diagnostics)
        return images, self.labels[torch.as_tensor(indices, dtype=torch.int64)]


@dataclass(frozen=True, slots=True)
class BadBatch:
    """A batch that could not be read, returned instead of raised: an exception raised in a
    DataLoader worker is re-created from its message text in the main process, which would turn
    a SpecError's diagnostics into an unrelated error. `batches()` raises it in the main process."""

    diagnostics: tuple[Diagnostic, ...]


def keep_batch(batch):
    """The DataLoader's collate_fn: `__getitems__` already returns a stacked batch."""
    return batch


def batches(loader):
    """Iterate a DataLoader over these data sets, raising a worker's unreadable file here."""
    for batch in loader:
        if isinstance(batch, BadBatch):
            raise SpecError(batch.diagnostics)
        yield batch


# --- naming ------------------------------------------------------------------------------------

def _fail(code: d.Code, message: str, file: str | os.PathLike | None, hint: str | None = None) -> SpecError:
    return SpecError([Diagnostic(code, message, None, hint, file=str(file) if file is not None else "--data")])


def describe(data: str) -> Description:
    """Parse a `--data` value and say what it holds, reading only directory listings."""
    kind, sep, rest = data.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        import difflib
        close = difflib.get_close_matches(kind, KINDS, n=1)
        raise _fail(d.UNKNOWN_DATASET, f"unknown data set '{kind}'", None,
                    (f"did you mean '{close[0]}'? " if close else "")
                    + "known: digits, cifar10:DIR, cifar100:DIR, mnist:DIR, fashion-mnist:DIR, "
                      "folder:DIR, synthetic[:N], csv:FILE, diabetes, npz:FILE, npy:INPUTS,LABELS, nifti:DIR")
    if kind == "diabetes":
        if sep:
            raise _fail(d.UNKNOWN_DATASET, "'diabetes' takes no file: the data ships with scikit-learn",
                        None, "write --data diabetes")
        return Description(kind=kind, path=None, shape=(10,), classes=1, augment="none",
                           epochs=100, epochs_why=TABULAR_WHY, defaults=TABULAR_RECIPE)
    if kind == "csv":
        return _describe_csv(rest if sep else "")
    if kind == "digits":
        if sep:
            raise _fail(d.UNKNOWN_DATASET, "'digits' takes no directory: the data ships with scikit-learn",
                        None, "write --data digits")
        return Description(kind=kind, path=None, shape=(1, 8, 8), classes=10, augment="none",
                           epochs=15, epochs_why="default for digits")
    if kind == "synthetic":
        if sep and not (rest.isascii() and rest.isdigit() and 1 <= int(rest.lstrip('0')[:12] or '0') <= MAX_SYNTHETIC):
            raise _fail(d.UNKNOWN_DATASET, f"synthetic takes a number of training images from 1 to "
                        f"{MAX_SYNTHETIC:,}, got '{rest[:40]}'", None, "write e.g. --data synthetic:256")
        return Description(kind=kind, path=None, shape=None, classes=None, augment="none",
                           epochs=1, epochs_why="default for synthetic data (a smoke test)",
                           size=int(rest) if sep else None)
    if kind in arrays.KINDS:
        path, labels = arrays.paths(kind, rest if sep else "")
        return Description(kind=kind, path=path, test_path=labels, shape=None, classes=None, augment="none",
                           epochs=arrays.EPOCHS, epochs_why="default for arrays")
    if not sep or not rest:
        raise _fail(d.UNKNOWN_DATASET, f"'{kind}' needs the directory that holds its files", None,
                    f"write --data {kind}:DIR")
    path = Path(rest).expanduser()
    if kind == "cifar10":
        return Description(kind=kind, path=path, shape=(3, 32, 32), classes=10, augment="crop+flip",
                           epochs=300, epochs_why="the paper's CIFAR recipe")
    if kind == "cifar100":
        return Description(kind=kind, path=path, shape=(3, 32, 32), classes=100, augment="crop+flip",
                           epochs=300, epochs_why="the paper's CIFAR recipe")
    if kind in ("mnist", "fashion-mnist"):
        return Description(kind=kind, path=path, shape=(1, 28, 28), classes=10, augment="none",
                           epochs=40, epochs_why=f"default for {kind}")
    if kind in nifti.KINDS:
        return Description(kind=kind, path=path, shape=None, classes=len(nifti.classes(path)), augment="none",
                           epochs=nifti.EPOCHS, epochs_why="default for volumes")
    classes = _folder_classes(path)
    return Description(kind=kind, path=path, shape=None, classes=len(classes), augment="resized-crop+flip",
                       epochs=90, epochs_why="the paper's ImageNet recipe")


def for_input(desc: Description, shape: Sequence[int]) -> Description:
    """`desc` as it applies to a spec whose input is `shape`: synthetic data for a vector input
    is generated as table rows (`tabular.synthetic`) and trains with the tabular recipe (the
    paper's SGD at lr 0.1 diverges on MLPs without normalisation)."""
    if desc.kind == "synthetic" and len(shape) == 1:
        return replace(desc, defaults=TABULAR_RECIPE,
                       epochs_why="default for synthetic data (a smoke test); AdamW lr 1e-3 for rows")
    return desc


def _describe_csv(rest: str) -> Description:
    """csv:FILE or csv:TRAIN,TEST (a file whose own name holds a comma is taken whole)."""
    if not rest:
        raise _fail(d.UNKNOWN_DATASET, "'csv' needs the CSV file to read", None,
                    "write --data csv:FILE --target COLUMN (or csv:TRAIN,TEST)")
    files = [rest] if "," not in rest or Path(rest).expanduser().exists() else rest.split(",")
    if len(files) > 2 or not all(files):
        raise _fail(d.UNKNOWN_DATASET, f"csv takes one file or two (TRAIN,TEST), got '{rest[:80]}'", None,
                    "write --data csv:FILE or --data csv:TRAIN,TEST")
    paths = [Path(f).expanduser() for f in files]
    return Description(kind="csv", path=paths[0], test_path=paths[1] if len(paths) == 2 else None,
                       shape=None, classes=None, augment="none", epochs=100, epochs_why=TABULAR_WHY,
                       defaults=TABULAR_RECIPE)


def load(data: str | Description, *, shape: Shape, classes: int, task: str = "classification",
         pipeline: Any = None) -> Data:
    """Read a data set. `shape` and `classes` (the spec's) size synthetic data and folder images;
    tabular data is encoded for `task` (with `pipeline`, a checkpoint's, when given)."""
    desc = data if isinstance(data, Description) else describe(data)
    if desc.tabular:
        return tabular.load(desc, task=task, pipeline=pipeline)
    if desc.kind == "synthetic" and len(shape) == 1:  # feature vectors: rows, not images
        return tabular.synthetic(desc, width=shape[0], classes=classes, task=task)
    names: tuple[str, ...] = tuple(str(i) for i in range(desc.classes or classes))
    pixel_max = 255.0
    train: TensorSet | FolderSet
    test: TensorSet | FolderSet
    val: TensorSet | FolderSet | None = None
    if desc.kind == "digits":
        train, test = _digits()
        pixel_max = 16.0
    elif desc.kind == "synthetic":
        train, test = _synthetic(shape, classes, desc)
    else:
        assert desc.path is not None  # every kind but digits and synthetic names its files
        if desc.kind == "cifar10":
            train, test = _cifar(desc.path, 10)
        elif desc.kind == "cifar100":
            train, test = _cifar(desc.path, 100)
        elif desc.kind in ("mnist", "fashion-mnist"):
            train, test = _mnist(desc.path, desc.kind)
        elif desc.kind in arrays.KINDS:
            (x, y), (x_test, y_test), pixel_max = arrays.load(desc, tuple(shape), desc.classes or classes)
            train, test = image_set(x, y), image_set(x_test, y_test)
        elif desc.kind in nifti.KINDS:
            train, test, names, val = nifti.load(desc.path, tuple(shape))
            pixel_max = 1.0
        else:
            train, test, names, val = _folder(desc.path, shape)
    _require_images(desc, train, test)
    resized = None
    if isinstance(train, FolderSet):
        mean, std = _stats(_sample(train, 1000), pixel_max)
        data_shape = shape
        resized = _resized(train, shape, 1000)
    else:
        assert isinstance(test, TensorSet)
        data_shape = _same_shape(desc, train, test, shape)
        mean, std = _stats(train.images, pixel_max)
    return Data(description=desc, train=train, test=test, shape=data_shape,
                classes=desc.classes or classes, class_names=names, pixel_max=pixel_max,
                mean=mean, std=std, resized=resized, val=val)


def _require_images(desc: Description, train: TensorSet | FolderSet, test: TensorSet | FolderSet) -> None:
    """An empty split would train zero steps, or report a mean of nothing (NaN) as a result."""
    for split, images in (("training", train), ("test", test)):
        if len(images) == 0:
            raise _fail(d.NO_DATA, f"the {split} split of {desc.name} holds no images", desc.path,
                        "point --data at a data set with images in both splits")


def _same_shape(desc: Description, train: TensorSet, test: TensorSet, shape: Shape) -> Shape:
    """Files declare their own image size; only the spec's input can be fed to the network
    (a smaller image would pass through a network with global pooling and train on nonsense)."""
    want = "x".join(map(str, shape))
    for split, images in (("training", train), ("test", test)):
        found = tuple(images.images.shape[1:])
        if found != tuple(shape):
            raise _fail(d.DATA_MISMATCH, f"the spec's input is {want} but the {split} images of {desc.name} "
                        f"are {'x'.join(map(str, found))}", desc.path,
                        f"write `input {'x'.join(map(str, found))}` in the spec, or use data of {want} "
                        "images (densedsl resizes only folder: data)")
    return tuple(shape)


def _stats(images: torch.Tensor, pixel_max: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images scaled to [0, 1], in chunks."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    axes = (0, *range(2, images.dim()))  # all but the channels, whatever the rank
    for chunk in images.split(4096):
        x = chunk.to(torch.float64).div_(pixel_max)
        total += x.sum(dim=axes)
        squares += x.square().sum(dim=axes)
    n = images.numel() // images.shape[1]
    mean = total / n
    std = (squares / n - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def _sample_indices(n: int, limit: int) -> range:
    return range(0, n, max(1, n // limit))[:limit]


def _sample(ds: "FolderSet", limit: int) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in _sample_indices(len(ds), limit)])


def _resized(ds: "FolderSet", shape: Shape, limit: int) -> str | None:
    """Folder images are resized to the spec's input, explicitly: say from what sizes (those of
    a sample, read from the headers), so an upscaled thumbnail is not a silent surprise."""
    from PIL import Image
    sizes = set()
    for i in _sample_indices(len(ds), limit):
        with Image.open(ds.files[i]) as im:  # decoded once already by _sample: known to be sane
            sizes.add((im.size[1], im.size[0]))
    target = (shape[1], shape[2])
    if sizes == {target}:
        return None
    smallest, largest = min(sizes, key=lambda s: (s[0] * s[1], s)), max(sizes, key=lambda s: (s[0] * s[1], s))
    found = "x".join(map(str, smallest)) + ("" if smallest == largest else " … " + "x".join(map(str, largest)))
    return (f"from {found} to {'x'.join(map(str, target))}, bilinear (sizes of a sample of "
            f"{len(_sample_indices(len(ds), limit))} images)")


# --- digits ------------------------------------------------------------------------------------

def _digits() -> tuple[TensorSet, TensorSet]:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise _fail(d.MISSING_PACKAGE, "the digits data set comes with scikit-learn, which is not installed",
                    None, "pip install scikit-learn (or densedsl[train])") from None
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype("uint8")).unsqueeze(1)  # values 0..16
    labels = torch.from_numpy(bunch.target.astype("int64"))
    train_i, test_i = train_test_split(list(range(len(labels))), test_size=0.2, random_state=0,
                                       stratify=bunch.target)
    train_i, test_i = torch.tensor(sorted(train_i)), torch.tensor(sorted(test_i))
    return image_set(images[train_i], labels[train_i]), image_set(images[test_i], labels[test_i])


# --- synthetic ---------------------------------------------------------------------------------

def _synthetic(shape: Shape, classes: int, desc: Description) -> tuple[TensorSet, TensorSet]:
    """Noisy copies of one random template per class: learnable, so a smoke run can improve."""
    n_train = desc.size or 512
    n_test = max(classes, n_train // 4)
    # generating costs ~5 bytes an element at its peak (int16 noise and templates, uint8 result)
    needed = 5 * (n_train + n_test + classes) * math.prod(shape)
    if needed > loaded.MAX_FILE_BYTES:
        raise _fail(d.OUT_OF_MEMORY, f"synthetic:{n_train} images of {'x'.join(map(str, shape))} would need "
                    f"{needed / 2**30:.1f} GiB to generate, more than the {loaded.MAX_FILE_BYTES / 2**30:.0f} GiB "
                    "a data set may use", None, "ask for fewer images, e.g. --data synthetic:256")
    g = torch.Generator().manual_seed(1234)
    templates = torch.randint(0, 256, (classes, *shape), generator=g, dtype=torch.int16)

    def make(n: int) -> TensorSet:
        labels = torch.randint(0, classes, (n,), generator=g)
        noise = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.int16)
        return image_set(((3 * templates[labels] + noise) // 4).to(torch.uint8), labels)

    return make(n_train), make(n_test)


# --- CIFAR -------------------------------------------------------------------------------------

def _cifar(path: Path, classes: int) -> tuple[TensorSet, TensorSet]:
    if classes == 10:
        subdir, train_files, test_files, label_bytes = (
            "cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], 1)
        title = "CIFAR-10 binary version"
    else:
        subdir, train_files, test_files, label_bytes = "cifar-100-binary", ["train.bin"], ["test.bin"], 2
        title = "CIFAR-100 binary version"
    where = f"download '{title}' from {_CIFAR_URL} and unpack it"
    fmt = (f"records of {label_bytes} label byte{'s' if label_bytes > 1 else ''} "
           + ("(coarse, fine) " if label_bytes == 2 else "") + "and 3072 pixel bytes (3x32x32, RGB planes)")
    root = path / subdir if not (path / train_files[0]).exists() and (path / subdir).is_dir() else path
    for name in train_files + test_files:
        if not _is_file_entry(root / name):
            python_version = "cifar-10-batches-py" if classes == 10 else "cifar-100-python"
            hint = where
            if (root / name.removesuffix(".bin")).exists() or (path / python_version).exists() \
                    or (root / "train").is_file():
                hint = (f"this looks like the Python (pickle) version; densedsl reads the binary "
                        f"version: {where}")
            raise _fail(d.FILE_NOT_FOUND, f"missing {title} file '{name}' ({fmt})", root / name,
                        f"{hint}; pass the directory that holds {', '.join(train_files + test_files)} "
                        f"(or its parent)")

    def read(names: list[str]) -> TensorSet:
        parts = [_read_cifar_file(root / n, classes, label_bytes, fmt, where) for n in names]
        return image_set(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))

    return read(train_files), read(test_files)


def _is_file_entry(path: Path) -> bool:
    """Present and not a directory: a FIFO or a device counts, so reading it says E912 rather
    than "missing"."""
    return path.exists() and not path.is_dir()


def _read_cifar_file(path: Path, classes: int, label_bytes: int, fmt: str, where: str):
    record = label_bytes + 3072
    with _open_data(path) as f:
        size = _file_size(f)
        if not size or size % record:
            raise _fail(d.BAD_FILE, f"the file holds {size} bytes, not a whole number of "
                        f"{record}-byte records ({fmt})", path, f"the file may be truncated: {where}")
        _within_limit(size, path, f"{size // record} records")
        raw = _read_exactly(f, size, path)
    if len(raw) != size:
        raise _fail(d.BAD_FILE, f"the file changed while it was read ({len(raw)} of {size} bytes)", path)
    table = torch.frombuffer(raw, dtype=torch.uint8).view(-1, record)
    labels = table[:, label_bytes - 1].to(torch.int64)  # CIFAR-100: the fine label
    if int(labels.max()) >= classes:
        bad = int((labels >= classes).nonzero()[0, 0])
        raise _fail(d.BAD_FILE, f"record {bad} has label {int(labels[bad])}, but the data set has "
                    f"{classes} classes ({fmt})", path,
                    "is this a CIFAR-100 file read as CIFAR-10, or the reverse?" if classes == 10
                    else f"the file may be damaged: {where}")
    return table[:, label_bytes:].reshape(-1, 3, 32, 32).clone(), labels


# --- MNIST and Fashion-MNIST ---------------------------------------------------------------------

_IDX_FILES = {
    "train-images": "train-images-idx3-ubyte", "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte", "test-labels": "t10k-labels-idx1-ubyte",
}


def _mnist(path: Path, kind: str) -> tuple[TensorSet, TensorSet]:
    title, url = ("MNIST", _MNIST_URL) if kind == "mnist" else ("Fashion-MNIST", _FASHION_URL)
    where = f"download the four {title} files from {url}"
    # torchvision keeps them in MNIST/raw or FashionMNIST/raw; people often point at either.
    candidates = [path, path / "raw", path / ("MNIST" if kind == "mnist" else "FashionMNIST") / "raw"]
    files: dict[str, Path] = {}
    for key, name in _IDX_FILES.items():
        variants = [name, name.replace("-idx", ".idx")]
        found = [c / (v + gz) for c in candidates for v in variants for gz in ("", ".gz")
                 if _is_file_entry(c / (v + gz))]
        if not found:
            raise _fail(d.FILE_NOT_FOUND, f"missing {title} file '{name}' or '{name}.gz' (IDX format: "
                        f"big-endian header, then unsigned bytes)", path / name,
                        f"{where}; gzipped or not, all four in one directory")
        files[key] = found[0]

    def read(split: str) -> TensorSet:
        images = _read_idx(files[f"{split}-images"], 3, where)
        labels = _read_idx(files[f"{split}-labels"], 1, where).to(torch.int64)
        if len(images) != len(labels):
            raise _fail(d.BAD_FILE, f"{len(images)} images but {len(labels)} labels in "
                        f"'{files[f'{split}-labels'].name}'", files[f"{split}-images"],
                        f"the files come from different downloads: {where}")
        if len(labels) and int(labels.max()) > 9:
            raise _fail(d.BAD_FILE, f"a label is {int(labels.max())}; {title} has 10 classes (0-9)",
                        files[f"{split}-labels"], where)
        return image_set(images.unsqueeze(1), labels)

    return read("train"), read("test")


def _read_idx(path: Path, ndim: int, where: str) -> torch.Tensor:
    what = "images (magic 0x00000803)" if ndim == 3 else "labels (magic 0x00000801)"
    header_size = 4 + 4 * ndim
    with _open_data(path) as f:
        header = _read_exactly(f, header_size, path)
        if len(header) < header_size or header[:3] != b"\x00\x00\x08" or header[3] != ndim:
            found = bytes(header[:4]).hex() if len(header) >= 4 else f"{len(header)} bytes"
            raise _fail(d.BAD_FILE, f"not an IDX file of unsigned-byte {what}: the file starts with "
                        f"{found}", path, f"expected the {what.split()[0]} file here; {where}")
        dims = [int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        count = math.prod(dims)
        promise = f"the header promises {'x'.join(map(str, dims))} values"
        _within_limit(count, path, promise.removeprefix("the header promises "))
        if path.suffix != ".gz":  # the file's size says at once whether the promise holds
            held = _file_size(f) - header_size
            if held != count:
                raise _fail(d.BAD_FILE, f"{promise} but the file holds {held}", path,
                            f"the file may be truncated: {where}")
        # Read no further than the promise (plus one byte, to notice more): a gzip stream may
        # decompress to far more than its header says.
        raw = _read_exactly(f, count + 1, path)
    if len(raw) != count:
        read = f"{len(raw)}" if len(raw) < count else f"more than {count}"
        raise _fail(d.BAD_FILE, f"{promise} but the file holds {read}", path,
                    f"the file may be truncated: {where}")
    return torch.frombuffer(raw, dtype=torch.uint8).view(*dims) if count else torch.zeros(dims, dtype=torch.uint8)


class _open_data:
    """A data file opened for reading (decompressed when it ends in .gz), with I/O and format
    failures as diagnostics; FIFOs and devices are refused before opening (E912)."""

    def __init__(self, path: Path):
        self.path = path
        self.file: Any = None

    def __enter__(self) -> Any:
        require_regular(self.path, "data file")
        try:
            self.file = gzip.open(self.path, "rb") if self.path.suffix == ".gz" else open(self.path, "rb")
        except OSError as e:
            raise _fail(d.CANNOT_READ, f"cannot read the file: {e.strerror or e}", self.path) from None
        return self.file

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.file.close()
        if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)):
            # gzip: a bad header (BadGzipFile), a damaged stream (zlib.error), a cut one (EOFError)
            raise _fail(d.BAD_FILE, f"cannot read the file: {exc}", self.path,
                        "the file is damaged or not gzip-compressed") from None
        if isinstance(exc, OSError):
            raise _fail(d.CANNOT_READ, f"cannot read the file: {exc.strerror or exc}", self.path) from None


def _file_size(f) -> int:
    return os.fstat(f.fileno()).st_size


def _within_limit(size: int, path: Path, what: str) -> None:
    if size > loaded.MAX_FILE_BYTES:
        raise _fail(d.BAD_FILE, f"the file declares {what} ({size / 2**30:.1f} GiB), more than densedsl "
                    f"reads from one data file ({loaded.MAX_FILE_BYTES / 2**30:g} GiB)", path,
                    "a header this large is damaged or crafted; a data set this large belongs in a "
                    "folder: data set, whose images are read as they are needed")


def _read_exactly(f, size: int, path: Path) -> bytearray:
    """Up to `size` bytes, in chunks: memory grows with what the file really holds, not with
    what it promises."""
    data = bytearray()
    while len(data) < size:
        chunk = f.read(min(_CHUNK, size - len(data)))
        if not chunk:
            break
        data += chunk
    return data


# --- folder ------------------------------------------------------------------------------------

def _folder_split(path: Path, split: str) -> Path | None:
    names = ("train",) if split == "train" else ("test", "val")
    return next((path / n for n in names if (path / n).is_dir()), None)


def _folder_classes(path: Path) -> list[str]:
    layout = "DIR/train/<class>/*.png and DIR/test/<class>/*.png (or DIR/val/...)"
    if not path.is_dir():
        raise _fail(d.FILE_NOT_FOUND, "no such directory", path, f"folder data sets are laid out as {layout}")
    train = _folder_split(path, "train")
    if train is None or _folder_split(path, "test") is None:
        missing = "train" if train is None else "test (or val)"
        raise _fail(d.FILE_NOT_FOUND, f"missing the '{missing}' subdirectory", path,
                    f"folder data sets are laid out as {layout}")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise _fail(d.BAD_FILE, f"found {len(classes)} class director{'y' if len(classes) == 1 else 'ies'} "
                    "in train/; a classifier needs at least 2", train,
                    f"one subdirectory per class: {layout}")
    return classes


def _folder(path: Path, shape: Shape) -> tuple[FolderSet, FolderSet, tuple[str, ...], FolderSet | None]:
    """(train, test, class names, validation): DIR/val is the validation split when DIR/test is
    there too, and the test split when it is alone."""
    classes = _folder_classes(path)
    index = {c: i for i, c in enumerate(classes)}
    if shape[0] not in (1, 3):
        raise _fail(d.DATA_MISMATCH, f"the spec's input has {shape[0]} channels; folder images are read "
                    "as grayscale (1) or RGB (3)", path, "use input 1xHxW or 3xHxW")

    def scan(split_dir: Path) -> tuple[list[Path], list[int]]:
        files: list[Path] = []
        labels: list[int] = []
        for c in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if c.name not in index:
                raise _fail(d.BAD_FILE, f"class '{c.name}' is not among the training classes", c,
                            f"the training classes are: {', '.join(classes)}")
            found = sorted(f for f in c.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            files += found
            labels += [index[c.name]] * len(found)
        if not files:
            raise _fail(d.NO_DATA, f"no image files ({', '.join(IMAGE_SUFFIXES)}) under the class "
                        "directories", split_dir, "put the images in DIR/<split>/<class>/")
        return files, labels

    train_dir, test_dir = _folder_split(path, "train"), _folder_split(path, "test")
    assert train_dir is not None and test_dir is not None  # _folder_classes refused their absence
    train = FolderSet(*scan(train_dir), shape)
    test = FolderSet(*scan(test_dir), shape)
    val = FolderSet(*scan(path / "val"), shape) if test_dir.name == "test" and (path / "val").is_dir() else None
    return train, test, tuple(classes), val


def _read_image(path: Path, shape: Shape) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError
    require_regular(path, "image")
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89M pixels on; densedsl's own, lower limit is checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened as im:
            _check_pixels(im.size, path)  # Image.open read only the header: nothing is decoded yet
            converted = im.convert("L" if shape[0] == 1 else "RGB")
            if converted.size != (shape[2], shape[1]):
                # Image.Resampling from Pillow 9.1 on (what the stubs know); 9.0 has the constant only
                bilinear = getattr(Image, "Resampling", Image).BILINEAR
                converted = converted.resize((shape[2], shape[1]), bilinear)
            data = bytearray(converted.tobytes())
    except Image.DecompressionBombError as e:  # beyond Pillow's hard limit, refused by Image.open
        raise _fail(d.BAD_FILE, f"the image is too large to decode: {e}", path,
                    f"densedsl decodes images of at most {MAX_IMAGE_PIXELS:,} pixels; shrink it or "
                    "remove it") from None
    except (OSError, UnidentifiedImageError, ValueError, EOFError, SyntaxError) as e:
        # Pillow reports damaged files as any of these, depending on the format's plugin.
        raise _fail(d.BAD_FILE, f"cannot read the image: {e}", path,
                    "remove or replace the file (Pillow could not decode it)") from None
    return torch.frombuffer(data, dtype=torch.uint8).view(shape[1], shape[2], shape[0]).permute(2, 0, 1).contiguous()


def _check_pixels(size: tuple[int, int], path: Path) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise _fail(d.BAD_FILE, f"the image is {width}x{height} pixels, more than densedsl decodes "
                    f"({MAX_IMAGE_PIXELS:,} pixels)", path, "shrink it or remove it: every image "
                    "is decoded at full size before it is resized to the spec's input")


# --- batches on the device ---------------------------------------------------------------------

def _random_resized_crop(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Each image cropped to a random box of 8% to 100% of its area and aspect ratio 3/4 to 4/3,
    resized back bilinearly (torchvision's RandomResizedCrop defaults, for 2-D images). A box
    that would not fit is clamped to the image rather than drawn again, so every image takes
    the same number of draws."""
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    area = torch.empty(n).uniform_(0.08, 1.0, generator=generator)
    ratio = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator).exp()
    fw, fh = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - fw)  # box centre, in [-1, 1] units
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - fh)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = fw, cx, fh, cy
    grid = F.affine_grid(theta.to(x.device), [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def prepare_batch(images: torch.Tensor, *, pixel_max: float, mean: torch.Tensor, std: torch.Tensor,
                  augment: str = "none", generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 images → float network input: scale to [0, 1], augment, normalise per channel.

    `crop` is the paper's random crop with zero padding (4 pixels for 32x32, H/8 in general),
    `resized-crop` the usual one for photographs (`_random_resized_crop`) and `flip` a horizontal
    flip with probability 1/2; all draw from `generator` (on the CPU), so a batch's augmentation
    depends only on the generator's seed, whatever the device.
    """
    x = images.float().div_(pixel_max)
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    per_channel = (1, -1) + (1,) * (x.dim() - 2)  # signals (N, C, L) and volumes too
    steps = set(augment.split("+"))
    if "resized-crop" in steps:
        x = _random_resized_crop(x, generator)
    if "crop" in steps:
        pad = max(1, round(h / 8))
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator).to(x.device)
        rows = (dy + torch.arange(h, device=x.device))[:, :, None]
        cols = (dx + torch.arange(w, device=x.device))[:, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None]
        # Advanced indices on dims 0, 2, 3 around the channel slice give (N, H, W, C).
        x = padded[batch, :, rows, cols].permute(0, 3, 1, 2)
    if "flip" in steps:
        # per rank: a signal's time axis, an image's horizontal axis, each axis of a volume
        axes = range(2, x.dim()) if x.dim() == 5 else (x.dim() - 1,)
        per_example = (n,) + (1,) * (x.dim() - 1)
        for axis in axes:
            flip = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(per_example)
            x = torch.where(flip, x.flip(axis), x)
    return (x - mean.view(per_channel)) / std.view(per_channel)
