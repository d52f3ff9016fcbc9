"""A loaded data set (`Data`: both splits and how to make network input of them), the in-memory
split both readers make (`TensorSet`), and the cap on what one data file may make densedsl
allocate. Below both readers, `datasets` (images, synthetic data, the dispatch) and `tabular`
(CSV tables), so neither imports the other's internals. The cap is read as
`loaded.MAX_FILE_BYTES` at call time, so tests can lower it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from .datasets import Description, FolderSet, Shape

# A data file (CIFAR, IDX, decompressed, or a CSV table) is read whole into memory: a header or
# a gzip stream cannot make densedsl allocate more than this for one file. MNIST's largest file
# is 47 MB.
MAX_FILE_BYTES = 1 << 30


class TensorSet(Dataset):
    """A split held in memory as two tensors of one length: `inputs` (images, signals or volumes,
    N x C x spatial, uint8 pixels or float32 values; or encoded table rows, N x width, float32)
    and `targets` (class indices, int64; or a regression's float32 values). Batches are gathered
    by indexing. Each reader checks and converts its tensors before making one
    (`datasets.image_set`, `tabular.load`)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor):
        assert len(inputs) == len(targets)
        self.inputs = inputs
        self.targets = targets

    # what the image and table code (and their callers) call the two tensors
    @property
    def images(self) -> torch.Tensor:
        return self.inputs

    @property
    def features(self) -> torch.Tensor:
        return self.inputs

    @property
    def labels(self) -> torch.Tensor:
        return self.targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[i], self.targets[i]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # The DataLoader hands a whole batch of indices here, so a batch costs one gather
        # instead of B calls and a collate.
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self.inputs[index], self.targets[index]


@dataclass(frozen=True, slots=True, kw_only=True)
class Data:
    """Both splits plus how to turn a batch of raw pixels into network input."""

    description: Description
    train: "TensorSet | FolderSet"
    test: "TensorSet | FolderSet"
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

