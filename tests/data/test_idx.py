import gzip

import numpy as np
import pytest

from jaxsparse import data
from tests.helpers import FMNIST_DIR, needs_fmnist


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_round_trip(tmp_path, suffix, dtype):
    arr = (np.arange(2 * 3 * 4) % 200).reshape(2, 3, 4).astype(dtype)
    path = tmp_path / f"x-idx3-ubyte{suffix}"
    data.write_idx(path, arr)
    out = data.read_idx(path)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_header_bytes_follow_the_standard(tmp_path):
    path = tmp_path / "labels.gz"
    data.write_idx(path, np.array([1, 2, 3], np.uint8))
    raw = gzip.open(path).read()
    assert raw[:8] == bytes([0, 0, 0x08, 1, 0, 0, 0, 3]) and raw[8:] == bytes([1, 2, 3])


def test_truncated_file_is_reported(tmp_path):
    path = tmp_path / "bad"
    data.write_idx(path, np.zeros((4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(data.IDXFormatError, match="corrupt or truncated"):
        data.read_idx(path)


def test_not_gzip_is_reported(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(data.IDXFormatError, match="bad.gz"):
        data.read_idx(path)


def test_missing_dataset_names_folder_and_fix(tmp_path):
    with pytest.raises(data.DatasetError) as e:
        data.load_fashion_mnist("train", str(tmp_path))
    assert str(tmp_path) in str(e.value) and "dataset-fashion-mnist" in str(e.value)


def test_corrupt_dataset_names_folder(tmp_path):
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes(b"\x00\x00\x08\x01garbage")
    with pytest.raises(data.DatasetError, match="corrupt"):
        data.load_fashion_mnist("train", str(tmp_path))


@needs_fmnist
def test_real_fashion_mnist():
    train = data.load_fashion_mnist("train", FMNIST_DIR)
    test = data.load_fashion_mnist("test", FMNIST_DIR)
    assert train.images.shape == (60000, 28, 28, 1) and len(test) == 10000
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int32
    assert set(np.unique(train.labels)) == set(range(10))
    assert abs(float(train.images.mean())) < 0.01 and abs(float(train.images.std()) - 1) < 0.01
