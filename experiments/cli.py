"""Command-line helpers shared by the experiment entry points."""

import os
import sys

from absl import flags

FLAGS = flags.FLAGS


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
