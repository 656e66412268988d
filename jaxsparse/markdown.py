"""Markdown tables: the one renderer behind every report jaxsparse prints or writes.

    >>> print(table(["variant", "images/s"], [["dense", "17.8"], ["block90", "63.1"]]))
    | variant | images/s |
    |---|---|
    | dense | 17.8 |
    | block90 | 63.1 |
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table: ``header`` then one line per row (cells rendered with ``str``).

    Raises:
        ValueError: for a row whose length is not the header's.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"markdown table row has {len(row)} cells, the header "
                             f"{len(header)}: {row!r}.")
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def shape(dims: Sequence[int]) -> str:
    """``(3, 3, 64, 64)`` -> ``"3x3x64x64"``."""
    return "x".join(map(str, dims))
