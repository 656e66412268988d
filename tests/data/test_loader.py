import numpy as np
import pytest

from jaxsparse import data


def _split(n=100):
    return data.Split(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1),
                      np.arange(n, dtype=np.int32), 10)


def test_epochs_are_permutations_and_differ():
    s = _split()
    labels = [np.asarray(b["label"]) for b in data.train_batches(s, 10, 0, 0, 20)]
    e0, e1 = np.concatenate(labels[:10]), np.concatenate(labels[10:])
    assert sorted(e0) == list(range(100)) and sorted(e1) == list(range(100))
    assert not np.array_equal(e0, e1)


def test_resuming_gives_the_same_batches():
    s = _split()
    full = [np.asarray(b["label"]) for b in data.train_batches(s, 8, 3, 0, 30)]
    resumed = [np.asarray(b["label"]) for b in data.train_batches(s, 8, 3, 17, 30)]
    for a, b in zip(full[17:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_seed_changes_order():
    s = _split()
    a = np.asarray(next(iter(data.train_batches(s, 10, 0, 0, 1)))["label"])
    b = np.asarray(next(iter(data.train_batches(s, 10, 1, 0, 1)))["label"])
    assert not np.array_equal(a, b)


def test_eval_batches_cover_everything_once_with_mask():
    s = _split(25)
    batches = list(data.eval_batches(s, 10))
    assert [b["image"].shape[0] for b in batches] == [10, 10, 10]
    mask = np.concatenate([np.asarray(b["mask"]) for b in batches])
    labels = np.concatenate([np.asarray(b["label"]) for b in batches])[mask > 0]
    np.testing.assert_array_equal(labels, np.arange(25))


def test_batch_larger_than_dataset():
    with pytest.raises(ValueError, match="batch_size=200"):
        data.steps_per_epoch(_split(), 200)


def test_synthetic_shape_and_errors():
    s = data.synthetic(6, (8, 8, 3), 5)
    assert s.images.shape == (6, 8, 8, 3) and s.labels.max() < 5
    with pytest.raises(data.DatasetError, match="shape"):
        data.synthetic(6, (8, 8), 5)
    with pytest.raises(data.DatasetError, match="imagenet"):
        data.load_dataset("imagenet", "train")
