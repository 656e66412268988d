"""Host-side numpy batching with per-epoch seeded shuffling and device prefetch.

The order of the data is a pure function of ``(seed, epoch)``, so a run resumed at step ``s``
sees exactly the batches it would have seen without the interruption.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import jax
import numpy as np

from jaxsparse.data.augment import augment_batch
from jaxsparse.data.datasets import Split


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled example order of one epoch (deterministic in ``seed`` and ``epoch``)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(split: Split, batch_size: int) -> int:
    """Number of full training batches in one epoch (the last partial batch is dropped)."""
    steps = len(split) // batch_size
    if steps < 1:
        raise ValueError(f"batch_size={batch_size} is larger than the dataset ({len(split)} "
                         f"examples); use a batch size of at most {len(split)}.")
    return steps


def _to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Puts this process's slice of a global batch onto the devices of ``sharding``."""
    if sharding is None:
        return jax.device_put(batch)
    n, pid = jax.process_count(), jax.process_index()
    out = {}
    for k, v in batch.items():
        local = v[pid * (len(v) // n):(pid + 1) * (len(v) // n)] if n > 1 else v
        out[k] = jax.make_array_from_process_local_data(sharding, local, v.shape)
    return out


def prefetch(it: Iterator, size: int = 2) -> Iterator:
    """Keeps ``size`` items of ``it`` in flight (device transfers are asynchronous)."""
    queue: collections.deque = collections.deque()
    for item in it:
        queue.append(item)
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def train_batches(split: Split, batch_size: int, seed: int, start_step: int, num_steps: int,
                  sharding=None, prefetch_size: int = 2, augment: bool = False,
                  ) -> Iterator[dict[str, jax.Array]]:
    """Yields training batches ``{"image", "label"}`` for steps ``start_step..num_steps-1``.

    Args:
        split: the data.
        batch_size: global batch size.
        seed: shuffling seed; epoch ``e`` uses the permutation of ``(seed, e)``.
        start_step: first step to produce (resuming skips straight to it).
        num_steps: total number of steps of the run.
        sharding: a ``NamedSharding`` for the batch axis, or ``None`` for the default device.
        prefetch_size: batches kept in flight on the devices.
        augment: random crop (2 px zero padding) and horizontal flip, seeded by
            ``(seed, epoch, step)`` (see :mod:`jaxsparse.data.augment`).
    """
    spe = steps_per_epoch(split, batch_size)

    def gen():
        perm, perm_epoch = None, -1
        for step in range(start_step, num_steps):
            epoch, i = divmod(step, spe)
            if epoch != perm_epoch:
                perm, perm_epoch = epoch_permutation(len(split), seed, epoch), epoch
            idx = np.sort(perm[i * batch_size:(i + 1) * batch_size])
            images = split.images[idx]
            if augment:
                images = augment_batch(images, seed, epoch, step)
            yield _to_global({"image": images, "label": split.labels[idx]}, sharding)

    return prefetch(gen(), prefetch_size)


def eval_batches(split: Split, batch_size: int, sharding=None) -> Iterator[dict[str, jax.Array]]:
    """Yields every example once, in order; the last batch is padded and carries a ``mask``."""

    def gen():
        for start in range(0, len(split), batch_size):
            img = split.images[start:start + batch_size]
            lbl = split.labels[start:start + batch_size]
            pad = batch_size - len(lbl)
            mask = np.concatenate([np.ones(len(lbl), np.float32), np.zeros(pad, np.float32)])
            if pad:
                img = np.concatenate([img, np.zeros((pad, *img.shape[1:]), img.dtype)])
                lbl = np.concatenate([lbl, np.zeros(pad, lbl.dtype)])
            yield _to_global({"image": img, "label": lbl, "mask": mask}, sharding)

    return prefetch(gen())
