"""Checking an experiment config before any data is read or anything compiled.

:func:`validate_config` runs in well under a second and raises one ``ValueError`` naming the
field, its value and what is valid, so a bad run fails at once instead of after data loading
and compilation. ``experiments.run`` and ``experiments.study`` call it first (the study for
every variant's config); :func:`jaxsparse.training.train.train_and_evaluate` calls it again.

Decision on sparsity fields while pruning is off: with ``sparsity.method="none"`` (the
default), setting ``pattern``, ``sparsity``, a schedule field, ``include`` or ``grouped`` is an
error naming the field; the method does not follow from the pattern, because one-shot,
gradual and SR-STE differ in accuracy and a silent default would hide that choice.
"""

from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp
import ml_collections

from jaxsparse.training import methods, optim
from jaxsparse.training.sharding import check_batch_size, maybe_initialize_distributed

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def check_workdir(workdir: str) -> None:
    """Checks that ``workdir`` is a folder, or can be made, that files can be written in (a
    temporary file is made and removed in it, or in its nearest existing parent folder;
    nothing is created).

    Raises:
        ValueError: when ``workdir`` is a file, or it (or the folder it would be made in) is
            not writable.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir!r} is a file, not a folder; give a folder (it is "
                         f"created if missing).")
    probe = os.path.abspath(workdir)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    try:
        if not os.path.isdir(probe):
            raise NotADirectoryError(f"{probe!r} is not a folder")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise ValueError(f"--workdir={workdir!r} cannot be written ({e.strerror or e} in "
                         f"{probe!r}); give a folder you can write to.") from None


def check_devices(config: ml_collections.ConfigDict) -> None:
    """Checks that the batch sizes split evenly over every device of every process (starts
    multi-process JAX first, as the run will).

    Raises:
        ValueError: naming the first batch size that does not divide.
    """
    maybe_initialize_distributed()
    n = jax.device_count()
    sizes = [("train.batch_size", config.train.batch_size),
             ("eval.batch_size", config.eval.batch_size)]
    if config.bench.enabled:
        sizes.append(("bench.batch_size", config.bench.batch_size))
    for key, size in sizes:
        check_batch_size(size, n, key)


def precision_dtype(precision: str):
    """The computation dtype named by a config's ``precision``.

    Raises:
        ValueError: for a name that is not in :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not valid; use one of "
                         f"{sorted(PRECISIONS)}.")
    return PRECISIONS[precision]


def validate_config(config: ml_collections.ConfigDict, workdir: str | None = None, *,
                    check_paths: bool = True, prefix: str = "") -> None:
    """Checks everything in an experiment config that can be checked without data.

    Args:
        config: an experiment config (``experiments/configs/default.py``).
        workdir: the run's folder, if known (must not be a file).
        check_paths: also check that ``init_from`` / ``distill.teacher`` folders exist (a study
            validates its variants before the dense run that makes them exists).
        prefix: where ``config`` sits in the config the user wrote (a study's ``"base."``),
            put before the field a message names first.

    Raises:
        ValueError: naming the first bad field, its value and what is valid.
    """
    try:
        _validate(config, workdir, check_paths)
    except ValueError as e:
        if not prefix or str(e).startswith("--workdir"):
            raise
        raise ValueError(f"{prefix}{e}") from None


def _validate(config: ml_collections.ConfigDict, workdir: str | None,
              check_paths: bool) -> None:
    if workdir is not None:
        check_workdir(workdir)
    precision_dtype(config.precision)
    for key in ("train.batch_size", "eval.batch_size"):
        section, field = key.split(".")
        if config[section][field] < 1:
            raise ValueError(f"{key}={config[section][field]} must be >= 1.")
    if config.train.epochs < 0 or config.train.num_steps < 0:
        raise ValueError(f"train.epochs={config.train.epochs} and train.num_steps="
                         f"{config.train.num_steps} must be >= 0.")
    optim.run_schedule(config.train, 1)  # Raises for a bad schedule_start_epoch.
    data = config.data
    if data.name == "imagefolder" and (not data.dir or tuple(data.shape)[-1] != 3):
        raise ValueError(f"data.name='imagefolder' needs data.dir (the folder holding train/ "
                         f"and val/) and data.shape=(H, W, 3); got data.dir={data.dir!r}, "
                         f"data.shape={tuple(data.shape)}.")
    check_devices(config)
    methods.check_block(config.sparsity)
    d = config.distill
    if not 0.0 <= d.alpha <= 1.0:
        raise ValueError(f"distill.alpha={d.alpha} must be in [0, 1].")
    if d.alpha > 0 and not d.teacher:
        raise ValueError(f"distill.alpha={d.alpha} needs distill.teacher: the workdir of a "
                         f"finished run of the same model.")
    pretrained = config.model.get("pretrained", "")
    if pretrained and not os.path.isfile(pretrained):
        raise ValueError(f"model.pretrained={pretrained!r}: no such file; give a safetensors "
                         f"file of a torchvision ResNet state_dict.")
    paths = (("distill.teacher", d.teacher if d.alpha > 0 else ""),
             ("init_from", config.init_from)) if check_paths else ()
    for key, path in paths:
        if path and not os.path.isdir(path):
            raise ValueError(f"{key}={path!r} holds no finished run (no such folder); point "
                             f"it at the workdir of a finished run.")
