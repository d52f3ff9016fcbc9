"""The data set readers, on tiny files written here in each format's exact layout."""

from __future__ import annotations

import gzip
import struct

import pytest
import torch

from densedsl import datasets
from densedsl.diagnostics import SpecError


def _codes(e: SpecError) -> list[str]:
    return [diag.code.code for diag in e.diagnostics]


def _image(seed: int, shape=(3, 32, 32)) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return bytes(torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).flatten().tolist())


# --- describe -------------------------------------------------------------------------------

def test_describe_known_kinds(tmp_path):
    assert datasets.describe("digits").shape == (1, 8, 8)
    cifar = datasets.describe(f"cifar100:{tmp_path}")
    assert (cifar.shape, cifar.classes, cifar.augment, cifar.epochs) == ((3, 32, 32), 100, "crop+flip", 300)
    assert datasets.describe(f"fashion-mnist:{tmp_path}").shape == (1, 28, 28)
    synth = datasets.describe("synthetic:40")
    assert (synth.size, synth.name, synth.shape) == (40, "synthetic:40", None)


@pytest.mark.parametrize("value, expected", [
    ("cifar", "did you mean 'cifar10'"),
    ("digits:/tmp", "takes no directory"),
    ("cifar10", "needs the directory"),
    ("synthetic:lots", "number of training images"),
])
def test_describe_rejects(value, expected):
    with pytest.raises(SpecError) as e:
        datasets.describe(value)
    assert _codes(e.value) == ["E117"]
    assert expected in str(e.value)


# --- CIFAR ----------------------------------------------------------------------------------

def _write_cifar10(root, records_per_file=2):
    root.mkdir(parents=True, exist_ok=True)
    label = 0
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        with open(root / name, "wb") as f:
            for _ in range(records_per_file):
                f.write(bytes([label % 10]) + _image(label))
                label += 1


def test_cifar10_reads_the_binary_version_from_the_parent_directory(tmp_path):
    _write_cifar10(tmp_path / "cifar-10-batches-bin")
    data = datasets.load(f"cifar10:{tmp_path}", shape=(3, 32, 32), classes=10)
    assert data.train.images.shape == (10, 3, 32, 32) and len(data.test) == 2
    assert data.train.labels.tolist() == list(range(10))
    assert data.test.labels.tolist() == [0, 1]
    # Record 3 of the training files: R plane first, row-major, exactly as written.
    assert bytes(data.train.images[3].flatten().tolist()) == _image(3)
    assert data.pixel_max == 255 and len(data.mean) == 3 and all(0 < s for s in data.std)


def test_cifar10_missing_file_names_it_and_where_to_get_it(tmp_path):
    _write_cifar10(tmp_path)
    (tmp_path / "data_batch_3.bin").unlink()
    with pytest.raises(SpecError) as e:
        datasets.load(f"cifar10:{tmp_path}", shape=(3, 32, 32), classes=10)
    text = str(e.value)
    assert _codes(e.value) == ["E901"]
    assert "data_batch_3.bin" in text and "https://www.cs.toronto.edu/~kriz/cifar.html" in text
    assert "CIFAR-10 binary version" in text and "3072 pixel bytes" in text


def test_cifar10_python_version_gets_a_pointed_hint(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(SpecError) as e:
        datasets.load(f"cifar10:{tmp_path}", shape=(3, 32, 32), classes=10)
    assert "Python (pickle) version" in str(e.value)


def test_cifar10_truncated_and_bad_labels_are_bad_files(tmp_path):
    _write_cifar10(tmp_path)
    with open(tmp_path / "test_batch.bin", "ab") as f:
        f.write(b"\x01\x02")
    with pytest.raises(SpecError) as e:
        datasets.load(f"cifar10:{tmp_path}", shape=(3, 32, 32), classes=10)
    assert _codes(e.value) == ["E908"] and "3073-byte records" in str(e.value)
    (tmp_path / "test_batch.bin").write_bytes(bytes([42]) + _image(0))
    with pytest.raises(SpecError) as e:
        datasets.load(f"cifar10:{tmp_path}", shape=(3, 32, 32), classes=10)
    assert _codes(e.value) == ["E908"] and "label 42" in str(e.value)


def test_cifar100_uses_the_fine_label(tmp_path):
    for name, n in (("train.bin", 3), ("test.bin", 1)):
        with open(tmp_path / name, "wb") as f:
            for i in range(n):
                f.write(bytes([i, 90 + i]) + _image(i))
    data = datasets.load(f"cifar100:{tmp_path}", shape=(3, 32, 32), classes=100)
    assert data.train.labels.tolist() == [90, 91, 92] and data.test.labels.tolist() == [90]
    assert bytes(data.train.images[2].flatten().tolist()) == _image(2)


# --- MNIST ----------------------------------------------------------------------------------

def _idx(dims: list[int], values: list[int]) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", n) for n in dims) + bytes(values)


def _write_mnist(root, gz: bool, n_train=3, n_test=2):
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": _idx([n_train, 28, 28], [(i * 7) % 256 for i in range(n_train * 784)]),
        "train-labels-idx1-ubyte": _idx([n_train], [i % 10 for i in range(n_train)]),
        "t10k-images-idx3-ubyte": _idx([n_test, 28, 28], [i % 256 for i in range(n_test * 784)]),
        "t10k-labels-idx1-ubyte": _idx([n_test], [9 - i for i in range(n_test)]),
    }
    for name, payload in files.items():
        if gz:
            with gzip.open(root / f"{name}.gz", "wb") as f:
                f.write(payload)
        else:
            (root / name).write_bytes(payload)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_plain_or_gzipped(tmp_path, gz):
    _write_mnist(tmp_path, gz)
    data = datasets.load(f"mnist:{tmp_path}", shape=(1, 28, 28), classes=10)
    assert data.train.images.shape == (3, 1, 28, 28) and data.train.labels.tolist() == [0, 1, 2]
    assert data.test.labels.tolist() == [9, 8]
    assert data.train.images[0, 0, 0, :3].tolist() == [0, 7, 14]


def test_fashion_mnist_in_torchvisions_raw_directory(tmp_path):
    _write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    data = datasets.load(f"fashion-mnist:{tmp_path}", shape=(1, 28, 28), classes=10)
    assert len(data.train) == 3


def test_mnist_problems(tmp_path):
    with pytest.raises(SpecError) as e:
        datasets.load(f"mnist:{tmp_path}", shape=(1, 28, 28), classes=10)
    assert _codes(e.value) == ["E901"] and "train-images-idx3-ubyte" in str(e.value)
    assert "yann.lecun.com" in str(e.value)
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx([2], [1, 2])[:-1])
    with pytest.raises(SpecError) as e:
        datasets.load(f"mnist:{tmp_path}", shape=(1, 28, 28), classes=10)
    assert _codes(e.value) == ["E908"] and "truncated" in str(e.value)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(SpecError) as e:
        datasets.load(f"mnist:{tmp_path}", shape=(1, 28, 28), classes=10)
    assert _codes(e.value) == ["E908"] and "not an IDX file" in str(e.value)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx([3], [1, 2, 3]))
    with pytest.raises(SpecError) as e:
        datasets.load(f"mnist:{tmp_path}", shape=(1, 28, 28), classes=10)
    assert "2 images but 3 labels" in str(e.value)


def test_corrupt_gzip_is_a_bad_file(tmp_path):
    _write_mnist(tmp_path, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(SpecError) as e:
        datasets.load(f"mnist:{tmp_path}", shape=(1, 28, 28), classes=10)
    assert _codes(e.value) == ["E908"]


# --- folder ---------------------------------------------------------------------------------

def _write_folder(root, split="test"):
    from PIL import Image
    for s, n in (("train", 3), (split, 1)):
        for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (root / s / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (12 + i, 10), color).save(root / s / c / f"{i}.png")


def test_folder_resizes_and_converts_per_spec(tmp_path):
    _write_folder(tmp_path, split="val")
    desc = datasets.describe(f"folder:{tmp_path}")
    assert desc.classes == 2 and desc.shape is None
    data = datasets.load(desc, shape=(3, 8, 8), classes=2)
    assert data.class_names == ("cat", "dog") and len(data.train) == 6 and len(data.test) == 2
    images, labels = data.train.__getitems__([0, 3])
    assert images.shape == (2, 3, 8, 8) and labels.tolist() == [0, 1]
    assert images[0, :, 4, 4].tolist() == [255, 0, 0] and images[1, :, 4, 4].tolist() == [0, 0, 255]
    gray = datasets.load(desc, shape=(1, 5, 5), classes=2)
    assert gray.test[0][0].shape == (1, 5, 5)


def test_folder_problems(tmp_path):
    with pytest.raises(SpecError) as e:
        datasets.describe(f"folder:{tmp_path / 'nope'}")
    assert _codes(e.value) == ["E901"]
    _write_folder(tmp_path)
    (tmp_path / "test" / "bird").mkdir()
    with pytest.raises(SpecError) as e:
        datasets.load(f"folder:{tmp_path}", shape=(3, 8, 8), classes=2)
    assert "class 'bird' is not among the training classes" in str(e.value)
    (tmp_path / "test" / "bird").rmdir()
    data = datasets.load(f"folder:{tmp_path}", shape=(3, 8, 8), classes=2)
    (tmp_path / "train" / "dog" / "2.png").write_bytes(b"not a png")
    bad = data.train.__getitems__([0, 5])
    assert isinstance(bad, datasets.BadBatch) and "2.png" in str(bad.diagnostics[0])
    # From a worker process too: the diagnostic, not whatever the DataLoader makes of its text.
    loader = torch.utils.data.DataLoader(data.train, batch_size=6, num_workers=1,
                                         collate_fn=datasets.keep_batch)
    with pytest.raises(SpecError) as e:
        list(datasets.batches(loader))
    assert _codes(e.value) == ["E908"] and "2.png" in str(e.value)


# --- digits, synthetic ----------------------------------------------------------------------

def test_digits_fixed_split():
    a = datasets.load("digits", shape=(1, 8, 8), classes=10)
    b = datasets.load("digits", shape=(1, 8, 8), classes=10)
    assert (len(a.train), len(a.test)) == (1437, 360)
    assert torch.equal(a.test.images, b.test.images)
    assert a.pixel_max == 16 and int(a.train.images.max()) == 16
    assert sorted(set(a.test.labels.tolist())) == list(range(10))


def test_synthetic_has_the_spec_shape_and_is_deterministic():
    a = datasets.load("synthetic:20", shape=(2, 5, 6), classes=4)
    b = datasets.load("synthetic:20", shape=(2, 5, 6), classes=4)
    assert a.train.images.shape == (20, 2, 5, 6) and len(a.test) == 5 and a.classes == 4
    assert torch.equal(a.train.images, b.train.images)


# --- prepare_batch --------------------------------------------------------------------------

def test_prepare_batch_crop_is_a_window_of_the_zero_padded_image():
    images = torch.randint(1, 256, (6, 3, 8, 8), dtype=torch.uint8)
    mean, std = torch.zeros(3), torch.ones(3)
    out = datasets.prepare_batch(images, pixel_max=255, mean=mean, std=std, augment="crop",
                                 generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images.float() / 255, (1, 1, 1, 1))  # pad = 8/8 = 1
    for i in range(6):
        windows = [padded[i, :, y:y + 8, x:x + 8] for y in range(3) for x in range(3)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_prepare_batch_flip_and_normalise_are_deterministic():
    images = torch.arange(2 * 1 * 2 * 3, dtype=torch.uint8).view(2, 1, 2, 3)
    kw = dict(pixel_max=1, mean=torch.tensor([1.0]), std=torch.tensor([2.0]), augment="flip")
    a = datasets.prepare_batch(images, generator=torch.Generator().manual_seed(5), **kw)
    b = datasets.prepare_batch(images, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a, b)
    plain = (images.float() - 1) / 2
    for i in range(2):
        assert torch.equal(a[i], plain[i]) or torch.equal(a[i], plain[i].flip(2))
