"""Run records: TensorBoard event files (tensorboardX) and the machine-readable results.json."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import jaxlib
import numpy as np
import tensorboardX
from tensorboardX.summary import hparams as hparams_summary

from jaxsparse import host_memory


def say(message: str, bar: Any = None) -> None:
    """Prints a progress line once per run (process 0), above ``bar`` (a ``tqdm`` progress bar)
    if given."""
    if jax.process_index() != 0:
        return
    if bar is not None:
        bar.write(message)
    else:
        print(message, flush=True)


# Process settings that change a measurement (XLA's CPU options, the allocator, threads).
PROCESS_ENV = ("XLA_FLAGS", "GLIBC_TUNABLES", "LD_PRELOAD", "OMP_NUM_THREADS")


def environment() -> dict[str, Any]:
    """Device kind and count plus the versions that decide a measurement."""
    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "python": platform.python_version(),
        "host_cpu_count": os.cpu_count(),
        **_host_cpu(),
        "process_env": {k: os.environ[k] for k in PROCESS_ENV if os.environ.get(k)},
        "host_memory": host_memory.state().as_dict(),
    }


def _host_cpu() -> dict[str, str]:
    """The host CPU's model name and its SIMD extensions that the kernels care about."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "neon", "asimd") if f in flags]
    return {"host_cpu": model, "host_simd": ",".join(simd) or "unknown"}


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _hparam_values(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, int | float | str | bool) else str(v))
            for k, v in _flatten(config).items()}


class Writer:
    """TensorBoard writer for one run; a no-op on every process but the first.

    Args:
        logdir: folder for the event files (the run's workdir).
    """

    def __init__(self, logdir: str):
        self._tb = tensorboardX.SummaryWriter(logdir) if jax.process_index() == 0 else None

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Writes ``{tag: value}`` scalars at ``step``."""
        if self._tb is not None:
            for tag, value in values.items():
                self._tb.add_scalar(tag, float(value), int(step))

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Writes markdown text (shown in TensorBoard's Text tab)."""
        if self._tb is not None:
            self._tb.add_text(tag, text, step)

    def image(self, tag: str, image: np.ndarray, step: int = 0) -> None:
        """Writes an (H, W, 3) uint8 image."""
        if self._tb is not None:
            self._tb.add_image(tag, image, step, dataformats="HWC")

    def hparams(self, config: Mapping[str, Any], metrics: Mapping[str, float], *,
                declare: bool = True) -> None:
        """Records one HParams row (session): the flattened ``config`` and its ``metrics``.

        TensorBoard's HParams view takes its columns from the first experiment summary it
        finds under a logdir, so exactly one may exist there: a standalone run declares its own
        (``declare=True``); a study's rows pass ``declare=False`` and the study declares every
        column once with :meth:`hparams_experiment`.
        """
        if self._tb is None:
            return
        exp, ssi, sei = hparams_summary(_hparam_values(config), dict(metrics))
        fw = self._tb._get_file_writer()
        for summary in ((exp, ssi, sei) if declare else (ssi, sei)):
            fw.add_summary(summary)
        for k, v in metrics.items():
            self._tb.add_scalar(k, float(v), 0)

    def hparams_experiment(self, config: Mapping[str, Any], metric_tags: Sequence[str]) -> None:
        """Declares the HParams columns of several rows written elsewhere under this logdir:
        the (flattened) hparam names of ``config`` and the metrics ``metric_tags``."""
        if self._tb is None:
            return
        exp, _, _ = hparams_summary(_hparam_values(config), {t: 0.0 for t in metric_tags})
        self._tb._get_file_writer().add_summary(exp)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def write_json(path: str, data: Mapping[str, Any]) -> None:
    """Writes ``data`` as JSON atomically (temp file + rename), first process only."""
    if jax.process_index() != 0:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic | jax.Array):
        return np.asarray(o).tolist()
    return str(o)
