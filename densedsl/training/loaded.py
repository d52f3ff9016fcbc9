"""A loaded data set (`Data`: both splits and how to make network input of them) and the cap
on what one data file may make densedsl allocate. Below both readers, `datasets` (images,
synthetic data, the dispatch) and `tabular` (CSV tables), so neither imports the other's
internals. The cap is read as `loaded.MAX_FILE_BYTES` at call time, so tests can lower it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .datasets import Description, FolderSet, ImageSet, Shape
    from .tabular import TabularSet

# A data file (CIFAR, IDX, decompressed, or a CSV table) is read whole into memory: a header or
# a gzip stream cannot make densedsl allocate more than this for one file. MNIST's largest file
# is 47 MB.
MAX_FILE_BYTES = 1 << 30


@dataclass(frozen=True, slots=True, kw_only=True)
class Data:
    """Both splits plus how to turn a batch of raw pixels into network input."""

    description: Description
    train: "ImageSet | FolderSet | TabularSet"
    test: "ImageSet | FolderSet | TabularSet"
    shape: Shape
    classes: int
    class_names: tuple[str, ...]
    pixel_max: float             # raw value of a white pixel (255; 16 for digits)
    mean: tuple[float, ...]      # per channel, of the training images scaled to [0, 1]
    std: tuple[float, ...]
    resized: str | None = None   # folder: what sizes (of a sample) are resized to the spec's
    task: str = "classification"  # or "regression" (tabular data with a regression head)
    pipeline: Any = None         # tabular: the tabular.Pipeline that encodes rows (mean/std unused)
    val: Any = None              # the validation split (selection.split_off), or None
    baseline: dict | None = None  # baseline.baseline on the test split, kept in the checkpoint
    warnings: tuple[str, ...] = ()  # what the report warns about the data (tabular.identifier_warnings)

    @property
    def name(self) -> str:
        return self.description.name

    @property
    def tabular(self) -> bool:
        return self.pipeline is not None

