"""Atomic, resumable checkpoints with orbax ``CheckpointManager``."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


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
