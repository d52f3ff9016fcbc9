"""The data set readers, on tiny files written here in each format's exact layout."""

from __future__ import annotations

import gzip
import struct

import pytest
import torch

from densedsl.core.diagnostics import SpecError
from densedsl.training import datasets, loaded


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
    ("synthetic:0", "from 1 to 1,000,000"),
    ("synthetic:1000001", "from 1 to 1,000,000"),
    ("synthetic:100000000000000000000", "from 1 to 1,000,000"),
    ("synthetic:１２", "number of training images"),  # full-width digits pass str.isdigit()
])
def test_describe_rejects(value, expected):
    with pytest.raises(SpecError) as e:
        datasets.describe(value)
    assert _codes(e.value) == ["E117"]
    assert expected in str(e.value)


def test_synthetic_counts_with_leading_zeros_are_numbers():
    assert datasets.describe("synthetic:000000000000007").size == 7


def test_synthetic_data_too_large_to_generate_is_refused_before_allocating():
    # 1,000,000 images of 3x224x224 would take ~900 GiB; refused from the arithmetic alone
    with pytest.raises(SpecError) as e:
        datasets.load("synthetic:1000000", shape=(3, 224, 224), classes=10)
    assert _codes(e.value) == ["E307"] and "GiB" in str(e.value)


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
    # The resize is said, not silent: the run's report prints it.
    assert data.resized == "from 10x12 … 10x14 to 8x8, bilinear (sizes of a sample of 6 images)"
    assert datasets.load(desc, shape=(3, 10, 13), classes=2).resized.startswith("from 10x12 … 10x14 to 10x13")


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


# --- hostile and broken files: refused before allocating ----------------------------------------

def _gzip_idx(path, dims: list[int], payload_bytes: int) -> None:
    """An IDX file, gzipped, whose header says `dims` and whose data is `payload_bytes` zeros."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", n) for n in dims))
        for _ in range(payload_bytes // (1 << 20)):
            f.write(bytes(1 << 20))
        f.write(bytes(payload_bytes % (1 << 20)))


def test_an_idx_header_promising_more_than_the_limit_is_refused_before_reading(tmp_path):
    _write_mnist(tmp_path, gz=True)
    _gzip_idx(tmp_path / "train-images-idx3-ubyte.gz", [4_000_000, 28, 28], 10)  # 2.9 GiB promised
    with pytest.raises(SpecError) as e:
        datasets.load(f"mnist:{tmp_path}", shape=(1, 28, 28), classes=10)
    assert _codes(e.value) == ["E908"] and "4000000x28x28" in str(e.value) and "1 GiB" in str(e.value)
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()  # uncompressed: the file's size is known
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx([100, 28, 28], [0] * 50))
    with pytest.raises(SpecError) as e:
        datasets.load(f"mnist:{tmp_path}", shape=(1, 28, 28), classes=10)
    assert "promises 100x28x28 values but the file holds 50" in str(e.value)


def test_a_gzip_stream_longer_than_its_header_is_read_only_up_to_the_promise(tmp_path):
    import tracemalloc
    _write_mnist(tmp_path, gz=True)
    # 3 images promised, 64 MiB of zeros in the stream (a 64 KiB file): a bomb, within the limit.
    _gzip_idx(tmp_path / "train-images-idx3-ubyte.gz", [3, 28, 28], 64 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(SpecError) as e:
            datasets.load(f"mnist:{tmp_path}", shape=(1, 28, 28), classes=10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert _codes(e.value) == ["E908"] and "holds more than 2352" in str(e.value)
    assert peak < 16 << 20  # the stream was not decompressed whole


def test_a_damaged_gzip_stream_is_a_bad_file(tmp_path):
    _write_mnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    intact = path.read_bytes()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # gzip, deflate, no name
    for damaged in (header + b"\x07" + bytes(8),  # a deflate block of the reserved type 3: zlib.error
                    intact[:-8] + bytes(8)):       # the right data, a wrong CRC-32: BadGzipFile
        path.write_bytes(damaged)
        with pytest.raises(SpecError) as e:
            datasets.load(f"mnist:{tmp_path}", shape=(1, 28, 28), classes=10)
        assert _codes(e.value) == ["E908"] and "train-images" in str(e.value)


def test_idx_images_of_another_size_than_the_spec_are_refused(tmp_path):
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx([2, 20, 20], [0] * 800))
    with pytest.raises(SpecError) as e:
        datasets.load(f"mnist:{tmp_path}", shape=(1, 28, 28), classes=10)
    assert _codes(e.value) == ["E207"]
    assert "the spec's input is 1x28x28 but the test images of mnist:" in str(e.value)
    assert "are 1x20x20" in str(e.value)


def test_folder_images_already_at_the_spec_size_need_no_resize_note(tmp_path):
    _write_folder(tmp_path)  # 12x10, 13x10 and 14x10 (width x height)
    for image in (tmp_path / "train").rglob("*.png"):
        if image.name != "0.png":
            image.unlink()
    assert datasets.load(f"folder:{tmp_path}", shape=(3, 10, 12), classes=2).resized is None


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_split_is_no_data(tmp_path, split):
    _write_mnist(tmp_path, gz=False, **{f"n_{split}": 0})
    with pytest.raises(SpecError) as e:
        datasets.load(f"mnist:{tmp_path}", shape=(1, 28, 28), classes=10)
    assert _codes(e.value) == ["E208"]
    assert f"the {'training' if split == 'train' else 'test'} split" in str(e.value)


def test_a_folder_split_without_images_is_no_data(tmp_path):
    _write_folder(tmp_path)
    for image in (tmp_path / "test").rglob("*.png"):
        image.unlink()
    with pytest.raises(SpecError) as e:
        datasets.load(f"folder:{tmp_path}", shape=(3, 8, 8), classes=2)
    assert _codes(e.value) == ["E208"]


def test_a_fifo_in_place_of_a_data_file_is_refused(tmp_path):
    import os
    import threading
    _write_cifar10(tmp_path)
    fifo = tmp_path / "test_batch.bin"
    fifo.unlink()
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    outcome: list = []

    def load() -> None:
        try:
            datasets.load(f"cifar10:{tmp_path}", shape=(3, 32, 32), classes=10)
        except SpecError as e:
            outcome.append(_codes(e))

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    loader.join(timeout=20)
    if loader.is_alive():  # unblock it, so the test fails instead of hanging
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert outcome == [["E912"]]


def test_cifar_file_larger_than_the_limit_is_refused_before_reading(tmp_path, monkeypatch):
    _write_cifar10(tmp_path, records_per_file=3)
    monkeypatch.setattr(loaded, "MAX_FILE_BYTES", 2 * 3073)
    with pytest.raises(SpecError) as e:
        datasets.load(f"cifar10:{tmp_path}", shape=(3, 32, 32), classes=10)
    assert _codes(e.value) == ["E908"] and "3 records" in str(e.value)


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header declares width x height; Pillow reads only the header on open."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height, says", [(9000, 9000, "9000x9000 pixels, more than densedsl decodes"),
                                                 (20000, 20000, "too large to decode")])
def test_an_image_too_large_to_decode_is_refused_from_its_header(tmp_path, width, height, says):
    # 9000x9000 passes Pillow's own bomb check (with a warning); 20000x20000 fails it (raises).
    _write_folder(tmp_path)
    _png_header_only(tmp_path / "train" / "cat" / "0.png", width, height)
    with pytest.raises(SpecError) as e:
        datasets.load(f"folder:{tmp_path}", shape=(3, 8, 8), classes=2)  # the statistics read it
    assert _codes(e.value) == ["E908"] and "0.png" in str(e.value) and says in str(e.value)
