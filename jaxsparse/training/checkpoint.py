"""Every checkpoint of a run, through orbax: the training state (``Checkpointer``, atomic and
resumable, under ``<workdir>/checkpoints``) and the finished run's inference variables
(:func:`save_final_variables`, under ``<workdir>/final_variables``), which fine-tunes
(``init_from``), distillation and the study load."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

FINAL_DIR = "final_variables"


class Checkpointer:
    """Keeps the last ``keep`` checkpoints of a run under ``<workdir>/checkpoints``.

    Orbax writes each checkpoint to a temporary folder and renames it when complete, so a run
    killed mid-save (even with SIGKILL) leaves the previous checkpoint intact.
    """

    def __init__(self, workdir: str, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep={keep}: at least one checkpoint must be kept.")
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 cleanup_tmp_directories=True),
        )

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or ``None``."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, force: bool = False) -> None:
        """Saves ``state`` (any pytree) as checkpoint ``step`` (asynchronously)."""
        self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, target: Any, step: int | None = None) -> Any:
        """Restores checkpoint ``step`` (default: latest) into the structure and shardings of
        ``target``, a pytree of arrays or ``jax.ShapeDtypeStruct``."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def save_final_variables(workdir: str, variables: Any) -> None:
    """Saves a finished run's inference variables (atomically) for later fine-tuning."""
    path = os.path.join(os.path.abspath(workdir), FINAL_DIR)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, variables, force=True)


def load_final_variables(workdir: str, like: Any, sharding: Any = None) -> Any:
    """Loads what :func:`save_final_variables` wrote, in the structure of ``like`` (placed
    with ``sharding``, e.g. replicated over the data-parallel mesh).

    Raises:
        ValueError: if ``workdir`` holds no finished run.
    """
    path = os.path.join(os.path.abspath(workdir), FINAL_DIR)
    if not os.path.isdir(path):
        raise ValueError(f"init_from={workdir!r} holds no finished run ({path} is missing); point "
                         f"it at the workdir of a run that completed.")
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                            like)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path, abstract)
