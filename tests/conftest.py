"""Shared fixtures: repository paths and a subprocess runner for the CLI."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
HAS_FMNIST = os.path.isfile(os.path.join(FMNIST_DIR, "train-images-idx3-ubyte.gz"))
needs_fmnist = pytest.mark.skipif(
    not HAS_FMNIST, reason=f"Fashion-MNIST not installed in {FMNIST_DIR} "
    "(bash scripts/setup.sh installs it as root)")


def run_cli(args, env=None, timeout=300, **kw):
    """Runs ``python <args>`` from the repository root; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout, **kw)


def scalars(logdir, tag):
    """``{step: value}`` of one TensorBoard scalar tag under ``logdir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def hparams_plugin_data(logdir):
    """``{run folder (relative): {tag: plugin content}}`` of TensorBoard's HParams plugin for
    every run under ``logdir`` (as TensorBoard reads them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for root, _, files in os.walk(str(logdir)):
        if any(f.startswith("events.out.tfevents") for f in files):
            acc = EventAccumulator(root)
            acc.Reload()
            try:
                content = acc.PluginTagToContent("hparams")
            except KeyError:  # No HParams data in this run.
                content = {}
            if content:
                out[os.path.relpath(root, str(logdir))] = content
    return out


CLASSES = ("cat", "ant", "bee")  # Not sorted: labels follow the sorted names.
SIZES = ((37, 50), (64, 31), (45, 45), (80, 60))


def make_image_folder(root, classes=CLASSES, per_class=4, val_per_class=2):
    """An image folder under ``root``: train/ and val/ with one folder per class of random
    JPEG and PNG images of odd sizes; returns ``root``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                w, h = SIZES[i % len(SIZES)]
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(pixels).save(d / f"{c}_{i}.{ext}")
    return root
