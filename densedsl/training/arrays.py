"""Arrays as a data set: `--data npz:FILE` and `--data npy:INPUTS.npy,LABELS.npy`, for inputs of
any rank the spec takes (1-D signals N x C x L, images N x C x H x W, volumes N x C x D x H x W).

    npz:FILE                 x_train, y_train, x_test, y_test (Keras' names), or x and y
                             (then split 80/20 at random, from a fixed seed)
    npy:INPUTS.npy,LABELS.npy   the inputs and their integer labels, split 80/20 likewise

uint8 inputs are pixels (scaled by 1/255, as images are); any other numbers are used as they
are (float32). Labels are whole numbers from 0 to the spec's classes - 1. Files are untrusted:
loaded with allow_pickle=False, their declared sizes checked against `loaded.MAX_FILE_BYTES`
before anything is read (an .npz's members as the zip directory declares them).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from ..core import diagnostics as d
from ..core.diagnostics import Diagnostic, SpecError
from ..core.files import require_regular
from . import loaded

KINDS = ("npy", "npz")
EPOCHS = 30


def _fail(code: d.Code, message: str, file: Path | None, hint: str | None = None) -> SpecError:
    return SpecError([Diagnostic(code, message, None, hint, file=str(file) if file is not None else "--data")])


def paths(kind: str, rest: str) -> tuple[Path, Path | None]:
    """(the file, the labels file for npy) of `--data npz:FILE` / `npy:INPUTS,LABELS`."""
    files = [Path(f).expanduser() for f in rest.split(",")] if rest else []
    if kind == "npz" and len(files) == 1:
        return files[0], None
    if kind == "npy" and len(files) == 2:
        return files[0], files[1]
    raise _fail(d.UNKNOWN_DATASET, f"{kind} takes {'one .npz file' if kind == 'npz' else 'INPUTS.npy,LABELS.npy'}, "
                f"got '{rest[:80]}'", None,
                "write --data npz:FILE (x_train, y_train, x_test, y_test) or --data npy:INPUTS.npy,LABELS.npy")


def _existing(path: Path) -> Path:
    require_regular(path, "array file")
    if not path.is_file():
        raise _fail(d.FILE_NOT_FOUND, "no such file", path, "check the path")
    if path.stat().st_size > loaded.MAX_FILE_BYTES:
        raise _fail(d.OUT_OF_MEMORY, f"the file is larger than the {loaded.MAX_FILE_BYTES / 2**30:.0f} GiB a data "
                    "file may be", path, "use fewer or smaller arrays")
    return path


def _load(path: Path, member: str | None = None) -> Any:
    import numpy as np
    try:
        if member is None:
            return np.load(_existing(path), allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            return archive[member]
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise _fail(d.BAD_FILE, f"cannot read {'the array' if member is None else repr(member)}: {str(e)[:200]}",
                    path, "write it with numpy.save / numpy.savez, of numbers (no objects)") from None


def _members(path: Path) -> dict[str, Any]:
    _existing(path)
    try:
        with zipfile.ZipFile(path) as z:
            declared = sum(info.file_size for info in z.infolist())
            names = [info.filename.removesuffix(".npy") for info in z.infolist()]
    except (zipfile.BadZipFile, OSError) as e:
        raise _fail(d.BAD_FILE, f"not an .npz archive: {e}", path, "write it with numpy.savez") from None
    if declared > loaded.MAX_FILE_BYTES:
        raise _fail(d.OUT_OF_MEMORY, f"its arrays declare {declared / 2**30:.1f} GiB, more than the "
                    f"{loaded.MAX_FILE_BYTES / 2**30:.0f} GiB a data file may hold", path, "use smaller arrays")
    for wanted in (("x_train", "y_train", "x_test", "y_test"), ("x", "y")):
        if all(w in names for w in wanted):
            return {w: _load(path, w) for w in wanted}
    raise _fail(d.MISSING, f"the archive holds {', '.join(names) or 'nothing'}", path,
                "name its arrays x_train, y_train, x_test, y_test (or x and y: split 80/20)")


def _split(x: Any, y: Any) -> dict[str, Any]:
    n = len(x)
    if n < 2:
        raise _fail(d.NO_DATA, f"{n} example: a training and a test split need at least 2", None)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).numpy()
    cut = max(1, n // 5)
    return {"x_train": x[order[cut:]], "y_train": y[order[cut:]], "x_test": x[order[:cut]], "y_test": y[order[:cut]]}


Split = tuple[torch.Tensor, torch.Tensor]  # inputs (uint8 or float32), int64 labels


def load(desc: Any, shape: tuple[int, ...], classes: int) -> tuple[Split, Split, float]:
    """((training inputs, labels), (test inputs, labels), pixel_max) of an npy: or npz: description."""
    import numpy as np
    assert desc.path is not None
    if desc.kind == "npz":
        arrays = _members(desc.path)
    else:
        assert desc.test_path is not None
        arrays = {"x": _load(desc.path), "y": _load(desc.test_path)}
    if "x" in arrays:
        if len(arrays["x"]) != len(arrays["y"]) or arrays["y"].ndim != 1:
            raise _fail(d.DATA_MISMATCH, f"{len(arrays['x'])} inputs but labels of shape "
                        f"{'x'.join(map(str, arrays['y'].shape))}", desc.path, "one whole-number label per input")
        arrays = _split(arrays["x"], arrays["y"])
    pixels = all(arrays[k].dtype == np.uint8 for k in ("x_train", "x_test"))
    sets: list[Split] = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        want = "x".join(map(str, shape))
        if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
            raise _fail(d.DATA_MISMATCH, f"the spec's input is {want} but x_{split} is "
                        f"{'x'.join(map(str, x.shape))}", desc.path,
                        f"arrays of N x {want} (N inputs of the spec's shape), or write the spec's input to fit")
        if x.dtype.kind not in "uif" or (x.dtype.kind == "f" and not np.isfinite(x).all()):
            raise _fail(d.BAD_FILE, f"x_{split} holds {x.dtype} values" + (", some not finite" if x.dtype.kind == "f"
                                                                          else ""), desc.path, "pass finite numbers")
        if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu" or (len(y) and not 0 <= y.min() <= y.max() < classes):
            raise _fail(d.DATA_MISMATCH, f"y_{split} must hold {len(x)} whole numbers from 0 to {classes - 1} "
                        "(the spec's classes)", desc.path, "one integer label per input; --set classes=K to change")
        if len(x) == 0:
            raise _fail(d.NO_DATA, f"x_{split} holds no inputs", desc.path)
        inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8 if pixels else np.float32))
        sets.append((inputs, torch.from_numpy(y.astype(np.int64))))
    return sets[0], sets[1], 255.0 if pixels else 1.0
