"""Sparsity patterns: small immutable records, parsed from and printed back to strings.

Layout convention (the one sparse hardware needs): a weight of shape ``(..., cin, cout)`` is seen
as the GEMM matrix ``(K, cout)`` with ``K = prod(shape[:-1])``; for a Flax conv kernel
``(kh, kw, cin, cout)`` the rows run along ``cin`` fastest, so N:M groups of M consecutive rows
stay inside one ``(kh, kw)`` tap when ``cin % M == 0``.

- :class:`NM` keeps N of every M consecutive weights along the reduction dimension (``cin``/``in``).
- :class:`Block` keeps whole ``bh x bw`` tiles of the GEMM view.
- :class:`Channel` keeps whole output filters (``cout``).
- :class:`Unstructured` keeps individual weights.
"""

from __future__ import annotations

import dataclasses
import re

VALID_PATTERNS = '"N:M" (e.g. "2:4", 1 <= N < M), "block:HxW" (e.g. "block:16x16"), ' \
                 '"channel" or "unstructured"'


@dataclasses.dataclass(frozen=True)
class NM:
    """N:M sparsity: N of every M consecutive reduction weights are kept."""

    n: int
    m: int

    def __post_init__(self):
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 1 <= self.n < self.m):
            raise ValueError(f"N:M pattern {self.n}:{self.m} is not valid: need integers "
                             f"1 <= N < M (e.g. 2:4, 1:4, 2:8).")

    @property
    def density(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclasses.dataclass(frozen=True)
class Block:
    """Block sparsity: whole ``bh x bw`` tiles of the ``(K, cout)`` GEMM view are kept."""

    bh: int
    bw: int

    def __post_init__(self):
        if not (isinstance(self.bh, int) and isinstance(self.bw, int)
                and self.bh >= 1 and self.bw >= 1):
            raise ValueError(f"block shape {self.bh}x{self.bw} is not valid: both sides must be "
                             f"positive integers (e.g. block:16x16).")

    def __str__(self) -> str:
        return f"block:{self.bh}x{self.bw}"


@dataclasses.dataclass(frozen=True)
class Channel:
    """Channel (filter) sparsity: whole output channels ``w[..., c]`` are kept or removed."""

    def __str__(self) -> str:
        return "channel"


@dataclasses.dataclass(frozen=True)
class Unstructured:
    """Unstructured sparsity: individual weights are kept or removed."""

    def __str__(self) -> str:
        return "unstructured"


Pattern = NM | Block | Channel | Unstructured
_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_BLOCK_RE = re.compile(r"^\s*block\s*:\s*(\d+)\s*x\s*(\d+)\s*$")


def parse_pattern(spec: str | Pattern) -> Pattern:
    """Parses ``"2:4"``, ``"block:16x16"``, ``"channel"`` or ``"unstructured"``.

    ``str(parse_pattern(s))`` gives back the canonical spelling of ``s``. Pattern objects are
    returned unchanged.

    Raises:
        ValueError: naming the bad spec and the valid forms.
    """
    if isinstance(spec, NM | Block | Channel | Unstructured):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"pattern={spec!r} is not valid; use {VALID_PATTERNS}.")
    s = spec.strip().lower()
    if m := _NM_RE.match(s):
        try:
            return NM(int(m.group(1)), int(m.group(2)))
        except ValueError as e:
            raise ValueError(f"pattern={spec!r}: {e}") from None
    if m := _BLOCK_RE.match(s):
        try:
            return Block(int(m.group(1)), int(m.group(2)))
        except ValueError as e:
            raise ValueError(f"pattern={spec!r}: {e}") from None
    if s == "channel":
        return Channel()
    if s == "unstructured":
        return Unstructured()
    if s.startswith("block"):
        raise ValueError(f"pattern={spec!r} is not valid: a block pattern is written "
                         f"block:HxW with positive H and W (e.g. block:16x16).")
    raise ValueError(f"pattern={spec!r} is not valid; use {VALID_PATTERNS}.")
