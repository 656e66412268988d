"""Loading an optional jaxsparse XLA FFI library and registering its targets.

The one mechanism behind the C++ CPU kernels (:mod:`jaxsparse.kernels.cpu.library`) and the
cuSPARSELt handler (:mod:`jaxsparse.kernels.gpu.cusparselt`): a library may be switched off by an
environment variable, be missing (not built) or fail to load; each case is a
:class:`LibraryStatus` saying why, and the caller keeps its portable lowering.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
from collections.abc import Callable

import jax


@dataclasses.dataclass(frozen=True)
class LibraryStatus:
    """Whether a library's FFI targets are registered, where it is, and why not otherwise."""

    available: bool
    path: str | None
    reason: str


def load(path: str | None, targets: dict[str, str], platform: str, *, disable_env: str,
         missing: str, hint: str, preload: Callable[[], None] | None = None,
         ) -> tuple[ctypes.CDLL | None, LibraryStatus]:
    """Loads the library at ``path`` and registers ``{target: symbol}`` for ``platform``.

    Args:
        path: the built library, or None when it was not found.
        targets: FFI target name -> exported handler symbol.
        platform: the XLA platform the targets run on (``"cpu"``, ``"CUDA"``).
        disable_env: an environment variable that, set to anything but ``""``/``"0"``, turns the
            library off.
        missing: the reason given when the library is not built.
        hint: how to rebuild it, appended when it does not load.
        preload: called before loading (e.g. to load the libraries it links against).

    Returns:
        ``(library or None, status)``.
    """
    if os.environ.get(disable_env, "") not in ("", "0"):
        return None, LibraryStatus(False, None, f"disabled by {disable_env}")
    if path is None or not os.path.isfile(path):
        return None, LibraryStatus(False, None, missing)
    try:
        if preload is not None:
            preload()
        lib = ctypes.CDLL(path)
        for target, symbol in targets.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform=platform)
    except (OSError, AttributeError) as e:
        return None, LibraryStatus(False, path, f"{path} does not load ({e}); {hint}")
    return lib, LibraryStatus(True, path, "loaded")
