"""Data parallelism with ``jax.sharding``: batch axis sharded, parameters replicated."""

from __future__ import annotations

import dataclasses
import os

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """The mesh over all devices and the two shardings training needs."""

    mesh: Mesh

    @property
    def batch(self) -> NamedSharding:
        """Leading (batch) axis split across devices."""
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    @property
    def replicated(self) -> NamedSharding:
        """Same value on every device."""
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    def check_batch_size(self, batch_size: int, what: str = "batch_size") -> None:
        """Raises ``ValueError`` unless ``batch_size`` splits evenly over the devices."""
        if batch_size % self.num_devices:
            raise ValueError(f"{what}={batch_size} is not divisible by the {self.num_devices} "
                             f"devices; use a multiple of {self.num_devices}.")


def maybe_initialize_distributed() -> None:
    """Calls ``jax.distributed.initialize()`` when a multi-host environment is configured.

    The coordinator is recognised from ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES``
    and ``JAX_PROCESS_ID``) or from a cluster JAX auto-detects (SLURM, Open MPI, Cloud TPU).
    """
    keys = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_ID")
    if any(k in os.environ for k in keys) and not jax.distributed.is_initialized():
        jax.distributed.initialize()


def data_parallel() -> DataParallel:
    """A one-axis mesh (``"data"``) over every device of every process."""
    return DataParallel(jax.make_mesh((jax.device_count(),), (DATA_AXIS,)))
