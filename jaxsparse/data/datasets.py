"""Datasets as in-memory numpy arrays: Fashion-MNIST (real, from IDX files) and synthetic."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jaxsparse.data.idx import IDXFormatError, read_idx

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Per-channel statistics of the Fashion-MNIST training images (pixel values in [0, 1]).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
_HOW_TO_GET = (
    "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; run "
    "`bash scripts/setup.sh` as root to do it for you), or download the four IDX .gz files from "
    "https://github.com/zalandoresearch/fashion-mnist and set --config.data.dir to their folder."
)


class DatasetError(ValueError):
    """The dataset is missing, corrupt or misconfigured."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split held in memory: ``images`` (N, H, W, C) float32, ``labels`` (N,) int32."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(H, W, C)`` of one image."""
        return tuple(self.images.shape[1:])


def load_fashion_mnist(split: str, data_dir: str | None = None, limit: int | None = None) -> Split:
    """Loads a Fashion-MNIST split, normalised, as (N, 28, 28, 1) float32.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        data_dir: folder holding the four ``*-ubyte.gz`` files; defaults to the Debian package's.
        limit: keep only the first ``limit`` examples (for quick runs).

    Raises:
        DatasetError: naming the folder looked in and how to get the files, if they are missing
            or corrupt.
    """
    if split not in _FILES:
        raise DatasetError(f"split={split!r} is not valid; use one of {sorted(_FILES)}.")
    data_dir = data_dir or DEFAULT_FASHION_MNIST_DIR
    img_name, lbl_name = _FILES[split]
    paths = [os.path.join(data_dir, n) for n in (img_name, lbl_name)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetError(f"Fashion-MNIST not found in {data_dir!r} (missing "
                           f"{', '.join(os.path.basename(p) for p in missing)}). {_HOW_TO_GET}")
    try:
        images, labels = read_idx(paths[0]), read_idx(paths[1])
    except IDXFormatError as e:
        raise DatasetError(f"Fashion-MNIST in {data_dir!r} is corrupt: {e} {_HOW_TO_GET}") from e
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"Fashion-MNIST in {data_dir!r} is corrupt: images {images.shape} and "
                           f"labels {labels.shape} do not match. {_HOW_TO_GET}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = (images.astype(np.float32) / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return Split(x[..., None], labels.astype(np.int32), num_classes=10)


def synthetic(num_examples: int, shape: tuple[int, ...], num_classes: int, seed: int = 0) -> Split:
    """Random images and labels of any shape, for throughput runs (accuracy is meaningless).

    Args:
        num_examples: number of examples.
        shape: image shape ``(H, W, C)``.
        num_classes: labels are drawn uniformly from ``[0, num_classes)``.
        seed: numpy seed.
    """
    if num_examples < 1 or len(shape) != 3 or min(shape) < 1 or num_classes < 1:
        raise DatasetError(f"synthetic dataset needs num_examples >= 1, shape (H, W, C) of "
                           f"positive ints and num_classes >= 1; got {num_examples}, {shape}, "
                           f"{num_classes}.")
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((num_examples, *shape), dtype=np.float32)
    return Split(images, rng.integers(0, num_classes, num_examples, dtype=np.int32), num_classes)


def load_dataset(name: str, split: str, *, data_dir: str | None = None,
                 limit: int | None = None, shape: tuple[int, ...] = (224, 224, 3),
                 num_classes: int = 1000, num_examples: int = 1024, seed: int = 0) -> Split:
    """Loads a dataset by name: ``"fashion_mnist"`` or ``"synthetic"``.

    Raises:
        DatasetError: for an unknown name, or a dataset that cannot be loaded.
    """
    if name == "fashion_mnist":
        return load_fashion_mnist(split, data_dir, limit)
    if name == "synthetic":
        n = num_examples if limit is None else min(limit, num_examples)
        return synthetic(n, tuple(shape), num_classes, seed=seed + (split == "test"))
    raise DatasetError(f"dataset={name!r} is not known; valid: ['fashion_mnist', 'imagefolder', "
                       f"'synthetic'].")
