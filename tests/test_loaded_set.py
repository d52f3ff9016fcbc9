"""Images and tables share one in-memory split class (training/loaded.py `TensorSet`): each reader
checks and converts its tensors, the class only holds and gathers them."""

from __future__ import annotations

import pytest
import torch

from densedsl.training import datasets, loaded, selection, tabular


def test_images_and_tables_are_one_class():
    assert datasets.ImageSet is tabular.TabularSet is loaded.TensorSet
    made = [name for module in (datasets, tabular) for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, torch.utils.data.Dataset)
            and value.__module__ == module.__name__ and name != "FolderSet"]
    assert made == [], f"a second in-memory data set class: {made}"


def test_image_labels_become_int64_and_table_targets_keep_their_dtype():
    images = datasets.image_set(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 2, 1], dtype=torch.uint8))
    assert images.targets.dtype == torch.int64 and images.labels is images.targets
    assert images.images is images.inputs
    rows = tabular._table_set(torch.arange(6.0).reshape(3, 2), torch.tensor([0.5, -1.0, 2.0]))
    assert rows.targets.dtype == torch.float32 and rows.features is rows.inputs
    with pytest.raises(AssertionError):
        tabular._table_set(torch.zeros(3, 1, 2), torch.zeros(3))


@pytest.mark.parametrize("kind", ["images", "rows"])
def test_gathering_a_batch_and_a_subset_is_the_same_for_both(kind):
    if kind == "images":
        ds = datasets.image_set(torch.arange(5 * 4, dtype=torch.uint8).reshape(5, 1, 2, 2), torch.arange(5))
    else:
        ds = tabular._table_set(torch.arange(10.0).reshape(5, 2), torch.arange(5.0) / 2)
    x, y = ds.__getitems__([4, 1])
    assert torch.equal(x, ds.inputs[[4, 1]]) and torch.equal(y, ds.targets[[4, 1]])
    assert len(ds) == 5 and torch.equal(ds[3][0], ds.inputs[3])
    part = selection._subset(ds, torch.tensor([0, 3]))
    assert type(part) is loaded.TensorSet and len(part) == 2
    assert torch.equal(part.targets, ds.targets[[0, 3]]) and part.targets.dtype == ds.targets.dtype
