"""One built experiment: the record training, evaluation and the study share.

:func:`build` turns a config into an :class:`Experiment` once (the compute dtype, both data
splits, the model's ``apply_fn`` and initial variables, the data-parallel mesh); the training
loop, the evaluation of a dense or a compiled model and the study all take it, so nothing is
rebuilt from the config or re-read from disk between them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxsparse import data as data_lib
from jaxsparse.data.imagefolder import load_image_folder
from jaxsparse.models import create_model, functional
from jaxsparse.models.pretrained import load_torchvision
from jaxsparse.training import checkpoint, steps
from jaxsparse.training.sharding import DataParallel, data_parallel
from jaxsparse.training.validate import precision_dtype


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """A config with its data, model and mesh built.

    Attributes:
        config: the experiment config.
        dtype: the compute dtype (``config.precision``).
        train: the training split (None: not loaded, e.g. a benchmark on random inputs).
        test: the test split (None: not loaded).
        apply_fn: ``apply_fn(variables, x, train=False)``.
        variables: the model's initial variables (also the structure checkpoints load into).
        dp: the data-parallel mesh.
    """

    config: ml_collections.ConfigDict
    dtype: Any
    train: data_lib.Split | None
    test: data_lib.Split | None
    apply_fn: Callable[..., Any]
    variables: dict
    dp: DataParallel

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(H, W, C)`` of one input."""
        split = self.test if self.test is not None else self.train
        return tuple(split.image_shape) if split is not None else \
            tuple(self.config.data.shape)

    def example(self, batch_size: int) -> jax.Array:
        """Zeros of one input batch, in the compute dtype."""
        return jnp.zeros((batch_size, *self.image_shape), self.dtype)

    def with_config(self, config: ml_collections.ConfigDict) -> Experiment:
        """The same data and model under another config of the same model and data (a
        fine-tune of this run)."""
        return dataclasses.replace(self, config=config)

    def load_variables(self, workdir: str) -> dict:
        """A finished run's inference variables, replicated over the mesh.

        Raises:
            ValueError: if ``workdir`` holds no finished run.
        """
        return checkpoint.load_final_variables(workdir, self.variables, self.dp.replicated)

    def evaluate(self, variables: Any, *, apply_fn: Callable[..., Any] | None = None,
                 batch_size: int | None = None,
                 eval_step: Callable[..., Any] | None = None) -> dict[str, float]:
        """Accuracy and mean loss over every example of the test split.

        Args:
            variables: the variables ``apply_fn`` takes.
            apply_fn: the model (default: this experiment's); e.g. a compiled sparse model.
            batch_size: evaluation batch (default ``config.eval.batch_size``; a compiled model
                needs the batch it was compiled for: the last batch is padded and masked).
            eval_step: a jitted step from :meth:`eval_step` (built when omitted).
        """
        step = eval_step or self.eval_step(apply_fn)
        totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
        for batch in data_lib.eval_batches(self.test, batch_size or self.config.eval.batch_size,
                                           self.dp.batch):
            out = step(variables, batch)
            totals = {k: totals[k] + out[k] for k in totals}
        totals = jax.device_get(totals)
        return {"accuracy": float(totals["correct"] / totals["count"]),
                "loss": float(totals["loss"] / totals["count"])}

    def eval_step(self, apply_fn: Callable[..., Any] | None = None) -> Callable[..., Any]:
        """The jitted evaluation step of ``apply_fn`` (default: this experiment's model)."""
        return jax.jit(steps.make_eval_step(apply_fn or self.apply_fn,
                                            self.config.data.num_classes, self.dtype))


def load_splits(config: ml_collections.ConfigDict) -> tuple[data_lib.Split, data_lib.Split]:
    """The train and test splits named by ``config.data`` (an image folder's test split is
    its ``val/``)."""
    d = config.data
    if d.name == "imagefolder":
        return load_image_folder(d.dir, image_size=d.shape[0], num_classes=d.num_classes,
                                 train_limit=d.train_limit, val_limit=d.test_limit)
    kw = dict(data_dir=d.dir or None, shape=tuple(d.shape), num_classes=d.num_classes,
              num_examples=d.synthetic_examples, seed=config.seed)
    train = data_lib.load_dataset(d.name, "train", limit=d.train_limit or None, **kw)
    test = data_lib.load_dataset(d.name, "test", limit=d.test_limit or None, **kw)
    return train, test


def build_model(config: ml_collections.ConfigDict, in_channels: int) -> tuple[Callable, dict]:
    """``(apply_fn, variables)`` of the model named by ``config.model``: initialised from
    ``config.seed``, or with the torchvision weights of ``model.pretrained`` (safetensors).

    Raises:
        ValueError: for pretrained weights that do not fit the model (naming the key).
    """
    m = config.model
    model = create_model(m.name, num_classes=config.data.num_classes, stem=m.stem, width=m.width,
                         in_channels=in_channels, dtype=precision_dtype(config.precision),
                         rngs=nnx.Rngs(config.seed))
    apply_fn, variables = functional(model)
    if m.get("pretrained"):
        variables = load_torchvision(m.pretrained, variables)
    return apply_fn, variables


def build(config: ml_collections.ConfigDict, *, load_data: bool = True) -> Experiment:
    """Builds the experiment of ``config`` (its data unless ``load_data=False``: then inputs
    are random and ``config.data.shape`` gives their shape).

    Raises:
        ValueError: for a bad precision; ``DatasetError`` when the data cannot be read.
    """
    dtype = precision_dtype(config.precision)
    train, test = load_splits(config) if load_data else (None, None)
    in_channels = test.image_shape[-1] if test is not None else config.data.shape[-1]
    apply_fn, variables = build_model(config, in_channels)
    return Experiment(config, dtype, train, test, apply_fn, variables, data_parallel())
