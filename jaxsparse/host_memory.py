"""Keeping freed host memory in the process, so XLA's CPU buffers stop faulting in afresh.

XLA on CPU allocates every execution's buffers (temporaries and outputs) with ``malloc`` and
frees them when the execution ends. glibc's ``malloc`` serves an allocation of 32 MiB or more,
and one a worker thread's arena (64 MiB at most) cannot hold, with a fresh ``mmap`` and gives
it back with ``munmap`` when freed, so on every call each page of those buffers faults in and is
zero-filled by the kernel before the computation touches it. For ResNet-50 at 224 px and
batch 16 that is about 96,000 page faults (390 MB) per call on a 2-core AVX2 machine; a 1x1
convolution of layer1 spends 60% of its time there. ONNX Runtime and OpenVINO keep an arena
of their own and pay none of it.

:func:`keep_freed_memory` sets glibc's ``malloc`` (``mallopt``) to serve everything from one
arena grown with ``brk`` and never give freed memory back to the system, so after a few calls
buffers are reused in place: the process keeps its peak memory, as a serving process does. The
heap can take several calls to settle, more on a busy machine: a call's buffers are sometimes
allocated before the last call's are freed, the free space fragments and the heap grows again
(on ResNet-50 batch 16 a few of the first 10-20 calls still fault, and the process keeps about
a third more resident memory than with glibc's defaults). Benchmarks warm up past it.

It changes the whole process, so it must run before JAX creates its CPU client (the
first computation): threads started earlier keep arenas of their own. :func:`state` says
what is in effect; results files record it (:func:`jaxsparse.training.summary.environment`).

The same settings, for a process started from a shell, are :data:`TUNABLES`:
``GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647``.
"""

from __future__ import annotations

import ctypes
import dataclasses
from typing import Any

# What keep_freed_memory sets, in order: (mallopt name, its number in glibc's malloc.h, the
# value, the same setting's GLIBC_TUNABLES name).
SETTINGS = (("M_ARENA_MAX", -8, 1, "glibc.malloc.arena_max"),  # Worker threads use brk memory.
            ("M_MMAP_MAX", -4, 0, "glibc.malloc.mmap_max"),  # No mmap for large allocations...
            ("M_TRIM_THRESHOLD", -1, 2**31 - 1, "glibc.malloc.trim_threshold"))  # ...no trim.
# The same settings for a process started from a shell (``GLIBC_TUNABLES=...``).
TUNABLES = ":".join(f"{tunable}={value}" for _, _, value, tunable in SETTINGS)


@dataclasses.dataclass(frozen=True)
class HostMemory:
    """What the process does with freed host memory.

    Attributes:
        kept: True once :func:`keep_freed_memory` took effect.
        detail: what was set (``"mallopt M_ARENA_MAX=1, ..."``) or why nothing was.
    """

    kept: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON form results files record."""
        return {"keep_freed_memory": self.kept, "detail": self.detail}


_state = HostMemory(False, "not requested (glibc malloc defaults: large buffers are mapped "
                           "afresh on every call)")


def state() -> HostMemory:
    """What is in effect in this process."""
    return _state


def _libc() -> tuple[ctypes.CDLL | None, str]:
    """glibc as loaded in this process, or None with the reason."""
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version
        mallopt = libc.mallopt
    except (AttributeError, OSError):
        return None, "the C library is not glibc (mallopt settings are glibc's)"
    version.restype = ctypes.c_char_p
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return libc, f"glibc {version().decode()}"


def _jax_started() -> bool:
    """Whether JAX has created its backends (clients and their threads) in this process."""
    from jax._src import xla_bridge  # jax has no public question for it.

    started = getattr(xla_bridge, "backends_are_initialized", None)
    return started() if started is not None else bool(getattr(xla_bridge, "_backends", {}))


def keep_freed_memory() -> HostMemory:
    """Makes this process reuse freed host memory instead of mapping it afresh (see the module
    docstring). Call it first thing, before any JAX computation. Calling it again is a no-op.

    Returns:
        The new :func:`state`. Where the C library is not glibc nothing is changed and
        ``kept`` is False with the reason (other allocators have their own settings).

    Raises:
        RuntimeError: when JAX has already created its backends (their threads would keep
            arenas of their own, so the setting would only partly apply), or when glibc
            refuses a setting.
    """
    global _state
    if _state.kept:
        return _state
    libc, name = _libc()
    if libc is None:
        _state = HostMemory(False, f"unchanged: {name}")
        return _state
    if _jax_started():
        raise RuntimeError(
            "keep_freed_memory() must run before JAX's first computation: JAX's CPU client "
            "and its threads already exist and would keep their own malloc arenas. Call it at "
            "the start of the program (the experiment CLIs do, unless --nokeep_freed_memory).")
    for what, param, value, _ in SETTINGS:
        if libc.mallopt(param, value) != 1:
            raise RuntimeError(f"{name} refused mallopt({what}, {value}).")
    _state = HostMemory(True, f"{name} mallopt " +
                        ", ".join(f"{what}={value}" for what, _, value, _ in SETTINGS))
    return _state


def sentence(recorded: dict[str, Any] | None) -> str:
    """The reports' words for a recorded :meth:`HostMemory.as_dict` (None: not recorded)."""
    if not recorded:
        return "host memory: not recorded"
    if recorded["keep_freed_memory"]:
        return f"host memory: freed buffers reused ({recorded['detail']})"
    return f"host memory: {recorded['detail']}"
