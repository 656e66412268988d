"""Command-line helpers shared by the experiment entry points."""

import sys

from absl import flags

FLAGS = flags.FLAGS


def parse_flags(argv: list[str]) -> list[str]:
    """Parses flags; a bad config override is one clear error, not a traceback."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}\nPass --helpfull to see the flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        msg = str(e.args[0] if e.args else e)
        while msg[:1] in "'\"" and msg[-1:] == msg[:1]:
            msg = msg[1:-1].encode().decode("unicode_escape")
        names = [a[2:].split("=")[0] for a in argv if a.startswith("--config.")]
        bad = [n for n in names if n.rsplit(".", 1)[-1] in msg] or names
        sys.exit(f"error: invalid config override {', '.join(bad)}: {' '.join(msg.split())}")
