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
        check_batch_size(batch_size, self.num_devices, what)


def check_batch_size(batch_size: int, num_devices: int, what: str = "batch_size") -> None:
    """Raises ``ValueError`` unless ``batch_size`` splits evenly over ``num_devices``."""
    if batch_size % num_devices:
        raise ValueError(f"{what}={batch_size} is not divisible by the {num_devices} "
                         f"devices; use a multiple of {num_devices}.")


def maybe_initialize_distributed() -> None:
    """Starts multi-process JAX when a multi-host environment is configured.

    ``JAX_COORDINATOR_ADDRESS`` (``host:port``) with ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` are read here and passed to ``jax.distributed.initialize`` explicitly
    (jax does not read the last two itself); otherwise a cluster JAX auto-detects (SLURM, Open
    MPI, Cloud TPU) is initialised with no arguments. CPU collectives across processes use gloo.

    Raises:
        ValueError: when ``JAX_COORDINATOR_ADDRESS`` is set without a valid process count or id.
    """
    if jax.distributed.is_initialized():
        return
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    auto = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_ID")
    if address is None and not any(k in os.environ for k in auto):
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if address is None:
        jax.distributed.initialize()
        return
    try:
        num = int(os.environ["JAX_NUM_PROCESSES"])
        pid = int(os.environ["JAX_PROCESS_ID"])
    except (KeyError, ValueError):
        raise ValueError(f"JAX_COORDINATOR_ADDRESS={address!r} needs JAX_NUM_PROCESSES (>= 1) "
                         f"and JAX_PROCESS_ID (0..N-1) as integers; got JAX_NUM_PROCESSES="
                         f"{os.environ.get('JAX_NUM_PROCESSES')!r}, JAX_PROCESS_ID="
                         f"{os.environ.get('JAX_PROCESS_ID')!r}.") from None
    if num < 1 or not 0 <= pid < num:
        raise ValueError(f"JAX_PROCESS_ID={pid} must be in 0..{num - 1} "
                         f"(JAX_NUM_PROCESSES={num}).")
    jax.distributed.initialize(address, num, pid)


def data_parallel() -> DataParallel:
    """A one-axis mesh (``"data"``) over every device of every process."""
    return DataParallel(jax.make_mesh((jax.device_count(),), (DATA_AXIS,)))
