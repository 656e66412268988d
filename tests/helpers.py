"""The tests' shared helpers (the one test-utilities module; test files import from here,
never from each other): repository paths, the CLI runner, TensorBoard readers, an image
folder, and the small models and masks the compiler tests share."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxsparse as js
from jaxsparse.models import ResNetTiny, ResNetTinyBottleneck, functional
from jaxsparse.study.variants import Variant

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


def assert_close(y, ref, rtol=1e-5):
    """``y`` equals ``ref`` to ``rtol`` of the reference's scale (f32 comparison)."""
    y, ref = np.asarray(y, np.float32), np.asarray(ref, np.float32)
    np.testing.assert_allclose(y, ref, rtol=rtol, atol=rtol * max(1.0, np.abs(ref).max()))


def masked_reference(apply_fn, variables, masks):
    """The masked dense model: ``apply_fn`` on the variables times ``masks``."""
    masked = js.apply_masks(variables, masks) if "params" in masks or "batch_stats" in masks \
        else {**variables, "params": js.apply_masks(variables["params"], masks)}
    return lambda *a: apply_fn(masked, *a)


@functools.cache
def resnet(bottleneck: bool, stem: str):
    """A tiny ResNet with non-trivial BatchNorm statistics (so removed channels carry nonzero
    constants): ``(apply_fn, variables, x)``."""
    ctor = ResNetTinyBottleneck if bottleneck else ResNetTiny
    model = ctor(num_classes=10, stem=stem, width=0.5, rngs=nnx.Rngs(0))
    apply_fn, variables = functional(model)
    variables = jax.tree.map(lambda v: v + 0.1 * jnp.abs(v) if v.ndim == 1 else v, variables)
    hw = 64 if stem == "imagenet" else 28
    x = jax.random.normal(jax.random.key(1), (2, hw, hw, 3))
    return apply_fn, variables, x


@functools.cache
def accel_model():
    """The bf16 bottleneck model compiled for cuda and tpu in tests/compiler and run on a GPU in
    tests/gpu: ``(apply_fn, variables, x)``."""
    net = ResNetTinyBottleneck(num_classes=16, stem="imagenet", width=1.0, dtype=jnp.bfloat16,
                               rngs=nnx.Rngs(0))
    apply_fn, variables = functional(net)
    x = jnp.zeros((8, 64, 64, 3), jnp.bfloat16)
    return apply_fn, variables, x


def accel_variant(name: str) -> Variant:
    """The :class:`Variant` the accelerator tests call ``name``: ``"channel"`` (coupled, 4-channel
    multiples), ``"channel+2:4"``, ``"block:BHxBW"`` (90%; half of the few 128x128 blocks the
    tiny model has) or an N:M pattern."""
    if name.startswith("channel"):
        return Variant(name, "channel", 0.5, grouped=True, channel_multiple=4,
                       nm_after=name.endswith("2:4"))
    if name.startswith("block"):
        return Variant(name, name, 0.5 if "128" in name else 0.9)
    return Variant(name, name)


def variant_masks(name: str):
    """The masks of :func:`accel_variant` ``name`` for :func:`accel_model`."""
    apply_fn, variables, x = accel_model()
    return accel_variant(name).masks(apply_fn, variables, x)
