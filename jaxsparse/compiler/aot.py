"""Lowering for an NVIDIA GPU on a machine that has none.

From jax 0.11 the Pallas Triton lowering asks for the target GPU (to pick its compute
capability) and, with no GPU present, needs it named by an abstract mesh; jax 0.10 lowers
without. :func:`cuda_target` names it in both cases, so one ``with`` block lowers a compiled
sparse model for ``cuda`` on any jax this package supports; :func:`custom_calls` says which
kernels the lowered program calls.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator

import jax

H100 = "NVIDIA H100"  # The device kind jax's Pallas GPU info knows for Hopper (sm_90).
H100_SMS = 132


@contextlib.contextmanager
def cuda_target(device_kind: str = H100, num_cores: int = H100_SMS) -> Iterator[None]:
    """Within this block, lowerings for ``cuda`` target ``device_kind`` when no GPU is local.

    Args:
        device_kind: a GPU device kind jax knows (e.g. ``"NVIDIA H100"``).
        num_cores: its streaming multiprocessors.
    """
    if jax.devices()[0].platform == "gpu":
        yield
        return
    try:
        device = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=num_cores,
                                             platform="gpu")
        mesh = jax.sharding.AbstractMesh((1,), ("cuda_target",), abstract_device=device)
    except (AttributeError, TypeError):  # A jax whose lowering does not ask for the GPU.
        yield
        return
    with jax.sharding.use_abstract_mesh(mesh):
        yield


def custom_calls(lowered_text: str) -> collections.Counter[str]:
    """How often each custom-call target appears in a lowered program's text
    (``jax.jit(f).trace(...).lower(...).as_text()``): which kernels it runs."""
    return collections.Counter(line.split("custom_call @")[1].split("(")[0]
                               for line in lowered_text.splitlines() if "custom_call @" in line)
