"""Command-line helpers shared by the experiment entry points."""

import os
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from jaxsparse import host_memory
from jaxsparse.data import DatasetError
from jaxsparse.training.train import Interrupted

INTERRUPTED = 130  # Exit status after SIGINT, as shells report it (128 + 2).

FLAGS = flags.FLAGS


def define_flags(what: str, workdir_help: str) -> None:
    """The required ``--config`` (a ``what`` config file; ``--config.a.b=v`` overrides) and
    ``--workdir`` flags."""
    flags.DEFINE_string("workdir", None, workdir_help)
    define_host_memory_flag()
    config_flags.DEFINE_config_file("config", None, f"{what} config file.", lock_config=True)
    flags.mark_flags_as_required(["config", "workdir"])


def define_host_memory_flag() -> None:
    """``--keep_freed_memory`` (default on): :func:`jaxsparse.host_memory.keep_freed_memory`
    before anything runs, applied by :func:`apply_host_memory`."""
    flags.DEFINE_bool("keep_freed_memory", True,
                      "Reuse freed host memory (glibc mallopt) so XLA's CPU buffers do not fault "
                      "in afresh on every call; recorded in every results file.")


def apply_host_memory() -> None:
    """Applies ``--keep_freed_memory``. It runs before JAX's first computation (and before
    ``jax.distributed`` starts), so it prints nothing: every report and results file says
    what was in effect."""
    if FLAGS.keep_freed_memory:
        host_memory.keep_freed_memory()


def fail(message: str) -> None:
    """Prints ``error: message`` once, on one line, and exits with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _config_path(argv: list[str]) -> str | None:
    """The ``--config`` file named on the command line (without a ``:override`` suffix)."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1].split(":", 1)[0]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":", 1)[0]
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """Parses flags; a missing config file or a bad override is one clear line, not a
    traceback."""
    path = _config_path(argv)
    if path is not None and not os.path.isfile(path):
        fail(f"--config file {path!r} does not exist.")
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(f"{' '.join(str(e).split())} (pass --helpfull to see the flags)")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        msg = str(e.args[0] if e.args else e)
        while msg[:1] in "'\"" and msg[-1:] == msg[:1]:
            msg = msg[1:-1].encode().decode("unicode_escape")
        names = [a[2:].split("=")[0] for a in argv if a.startswith("--config.")]
        bad = [n for n in names if n.rsplit(".", 1)[-1] in msg] or names
        fail(f"invalid config override {', '.join(bad)}: {' '.join(msg.split())}")


def run_mode(argv: list[str], modes: dict[str, Callable[[Any, str], Any]],
             check: Callable[[Any, str], None] | None = None) -> tuple[str, Any]:
    """Runs ``modes[config.mode](config, workdir)`` from the ``--config`` and ``--workdir``
    flags: ``(mode, result)``. A bad mode, config (``check`` first, then the mode's own
    checks) or dataset is one ``error:`` line and exit status 2; Ctrl-C (or SIGTERM) ends it
    with one line and exit status 130, no traceback."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax and absl are chatty at INFO.
    apply_host_memory()
    config, workdir = FLAGS.config, FLAGS.workdir
    mode = config.get("mode", "train")
    if mode not in modes:
        fail(f"config.mode={mode!r} is not valid; use one of {sorted(modes)}.")
    try:
        if check is not None:
            check(config, workdir)  # Before any data is read or anything compiled.
        return mode, modes[mode](config, workdir)
    except (DatasetError, ValueError) as e:
        fail(str(e))
    except Interrupted:  # The loop saved a checkpoint and said so.
        sys.exit(INTERRUPTED)
    except KeyboardInterrupt:  # Outside a training loop: finished runs are kept.
        print("Interrupted; finished runs and checkpoints are kept: rerun the same command "
              "to resume.", file=sys.stderr)
        sys.exit(INTERRUPTED)
