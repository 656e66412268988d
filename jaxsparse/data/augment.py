"""Host-side training augmentation: random crop with zero padding and horizontal flip.

Each batch's crops and flips are drawn from ``np.random.default_rng([seed, epoch, step, 1])``,
so they are a pure function of the seed, the epoch and the step, like the shuffling: a resumed
run sees exactly the augmented batches it would have seen. Vectorised numpy over the batch (one
padded copy and one fancy-indexed gather), so it stays well ahead of the training step.
"""

from __future__ import annotations

import numpy as np


def augment_batch(images: np.ndarray, seed: int, epoch: int, step: int, *, pad: int = 2,
                  flip: bool = True) -> np.ndarray:
    """Randomly crops (after zero-padding by ``pad``) and flips a ``(B, H, W, C)`` batch.

    Args:
        images: the batch, NHWC.
        seed: the run's seed.
        epoch: the epoch of the batch.
        step: the global step of the batch.
        pad: pixels of zero padding on every side before the random ``H x W`` crop.
        flip: flip each image left-right with probability 1/2.

    Returns:
        An array of the same shape and dtype.
    """
    if pad < 0:
        raise ValueError(f"augmentation pad={pad} must be >= 0.")
    b, h, w, _ = images.shape
    rng = np.random.default_rng([seed, epoch, step, 1])
    dy = rng.integers(0, 2 * pad + 1, size=b)
    dx = rng.integers(0, 2 * pad + 1, size=b)
    flips = rng.random(b) < 0.5 if flip else np.zeros(b, bool)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = dy[:, None] + np.arange(h)[None, :]  # (B, H)
    cols = dx[:, None] + np.arange(w)[None, :]  # (B, W)
    cols = np.where(flips[:, None], cols[:, ::-1], cols)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
