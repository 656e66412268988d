"""Training augmentation: deterministic in (seed, epoch, step), a real crop/flip, resumable."""

import numpy as np
import pytest

from jaxsparse.data import augment_batch, synthetic, train_batches


def images(b=5, h=6, w=7, c=2):
    return np.random.default_rng(0).standard_normal((b, h, w, c)).astype(np.float32)


def test_deterministic_in_seed_epoch_and_step():
    x = images()
    a = augment_batch(x, 0, 1, 10)
    np.testing.assert_array_equal(a, augment_batch(x, 0, 1, 10))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert not np.array_equal(a, augment_batch(x, 0, 1, 11))
    assert not np.array_equal(a, augment_batch(x, 1, 1, 10))


def test_each_image_is_a_padded_crop_or_its_mirror():
    x = images()
    out = augment_batch(x, 3, 0, 0, pad=2)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    h, w = x.shape[1:3]
    for i in range(len(x)):
        crops = [padded[i, dy:dy + h, dx:dx + w] for dy in range(5) for dx in range(5)]
        assert any(np.array_equal(out[i], c) or np.array_equal(out[i], c[:, ::-1])
                   for c in crops)
    np.testing.assert_array_equal(augment_batch(x, 3, 0, 0, pad=0, flip=False), x)
    with pytest.raises(ValueError, match="pad=-1"):
        augment_batch(x, 0, 0, 0, pad=-1)


def test_resumed_run_sees_the_same_augmented_batches():
    split = synthetic(64, (8, 8, 1), 10, seed=0)
    full = [b["image"] for b in train_batches(split, 16, 5, 0, 10, augment=True)]
    resumed = [b["image"] for b in train_batches(split, 16, 5, 6, 10, augment=True)]
    for a, b in zip(full[6:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    plain = [b["image"] for b in train_batches(split, 16, 5, 0, 2)]
    assert not np.array_equal(plain[0], full[0])
