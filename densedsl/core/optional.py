"""Optional packages: which extra of densedsl installs each, and the E911 error when one is missing.

`require("matplotlib", "drawing a heatmap")` imports and returns the module or raises SpecError
E911 naming the pip extra. `missing_package(error)` turns a ModuleNotFoundError raised anywhere
inside a command into the same error when it names an optional package, so an import deep in a
data loader or a progress bar never reads as an internal error.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from . import diagnostics as d

# import name → (the name pip knows it by, the densedsl extra that installs it); pyproject.toml
# lists the same packages under [project.optional-dependencies].
PACKAGES: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "onnxscript": ("onnxscript", "onnx"),
    "matplotlib": ("matplotlib", "train"),
    "tqdm": ("tqdm", "train"),
    "sklearn": ("scikit-learn", "train"),
    "PIL": ("pillow", "train"),
    "pygls": ("pygls", "lsp"),
    "lsprotocol": ("lsprotocol", "lsp"),
    "nibabel": ("nibabel", "nifti"),
}


def error(module: str, purpose: str | None = None) -> d.SpecError:
    """E911 for the optional package `module` (its import name)."""
    top = module.partition(".")[0]
    pip_name, extra = PACKAGES[top]
    needs = f"{purpose} needs" if purpose else "this command needs"
    return d.SpecError([d.Diagnostic(
        d.MISSING_PACKAGE, f"{needs} the optional package {pip_name}, which is not installed", None,
        f'pip install "densedsl[{extra}]" (or pip install {pip_name})', file=pip_name)])


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import an optional package or raise E911."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if missing_package(e) is None:
            raise
        raise error(module, purpose) from None


def missing_package(e: ModuleNotFoundError) -> d.SpecError | None:
    """E911 when `e` is about an optional package itself; None for anything else (a bug)."""
    top = (e.name or "").partition(".")[0]
    return error(top) if top in PACKAGES else None


__all__ = ["PACKAGES", "error", "missing_package", "require"]
