"""Data: IDX reader, Fashion-MNIST and synthetic datasets, host-side batching."""

from jaxsparse.data.augment import augment_batch
from jaxsparse.data.datasets import (
    DEFAULT_FASHION_MNIST_DIR,
    DatasetError,
    Split,
    load_dataset,
    load_fashion_mnist,
    synthetic,
)
from jaxsparse.data.idx import IDXFormatError, read_idx, write_idx
from jaxsparse.data.loader import epoch_permutation, eval_batches, steps_per_epoch, train_batches

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "DatasetError",
    "IDXFormatError",
    "Split",
    "augment_batch",
    "epoch_permutation",
    "eval_batches",
    "load_dataset",
    "load_fashion_mnist",
    "read_idx",
    "steps_per_epoch",
    "synthetic",
    "train_batches",
    "write_idx",
]
