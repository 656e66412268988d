"""Host-side numpy batching with per-epoch seeded shuffling and device prefetch.

The order of the data is a pure function of ``(seed, epoch)``, so a run resumed at step ``s``
sees exactly the batches it would have seen without the interruption.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import jax
import numpy as np

from jaxsparse.data import imagefolder
from jaxsparse.data.augment import augment_batch
from jaxsparse.data.datasets import Split
from jaxsparse.data.imagefolder import ImageFolder

DECODE_WORKERS = 2  # grain worker processes decoding an image folder's files.


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled example order of one epoch (deterministic in ``seed`` and ``epoch``)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(split: Split | ImageFolder, batch_size: int) -> int:
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
    size = len(next(iter(batch.values())))
    local = {k: v[pid * (len(v) // n):(pid + 1) * (len(v) // n)] if n > 1 else v
             for k, v in batch.items()}
    return _local_to_global(local, sharding, size)


def _local_to_global(batch: dict[str, np.ndarray], sharding, global_size: int,
                     ) -> dict[str, jax.Array]:
    """Puts this process's part of a global batch (already only its slice) on the devices."""
    if sharding is None:
        return jax.device_put(batch)
    return {k: jax.make_array_from_process_local_data(sharding, v, (global_size, *v.shape[1:]))
            for k, v in batch.items()}


def _folder_train(split: ImageFolder, batch_size: int, seed: int, start_step: int,
                  num_steps: int, sharding) -> Iterator[dict[str, jax.Array]]:
    spe = steps_per_epoch(split, batch_size)
    n, pid = jax.process_count(), jax.process_index()
    step = start_step
    while step < num_steps:
        epoch, first = divmod(step, spe)
        last = min(spe, first + num_steps - step)
        pos = imagefolder.local_positions(last, batch_size, first, pid, n)
        order = epoch_permutation(len(split), seed, epoch)
        for b in imagefolder.batches(split, order[pos], pos, batch_size // n, seed=seed,
                                     epoch=epoch, workers=DECODE_WORKERS):
            b.pop("mask")
            yield _local_to_global(b, sharding, batch_size)
            step += 1


def _folder_eval(split: ImageFolder, batch_size: int, sharding,
                 ) -> Iterator[dict[str, jax.Array]]:
    n, pid = jax.process_count(), jax.process_index()
    num_batches = -(-len(split) // batch_size)
    pos = imagefolder.local_positions(num_batches, batch_size, 0, pid, n)
    indices = np.where(pos < len(split), pos, -1)
    for b in imagefolder.batches(split, indices, pos, batch_size // n,
                                 workers=DECODE_WORKERS):
        yield _local_to_global(b, sharding, batch_size)


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
            ``(seed, epoch, step)`` (see :mod:`jaxsparse.data.augment`). An image folder
            always augments (random-resized crop and flip, :mod:`jaxsparse.data.imagefolder`).
    """
    if isinstance(split, ImageFolder):
        return prefetch(_folder_train(split, batch_size, seed, start_step, num_steps,
                                      sharding), prefetch_size)
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


def eval_batches(split: Split | ImageFolder, batch_size: int, sharding=None,
                 ) -> Iterator[dict[str, jax.Array]]:
    """Yields every example once, in order; the last batch is padded and carries a ``mask``."""
    if isinstance(split, ImageFolder):
        return prefetch(_folder_eval(split, batch_size, sharding))

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
