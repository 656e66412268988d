"""Masks of one tensor for a sparsity pattern: ``compute_mask(w, pattern, sparsity, scores)``.

Every mask keeps an exact count chosen by ranking scores with a stable sort (ties go to the lower
index), so masks are deterministic and the count is exact even when ``sparsity`` is a traced
value inside ``jax.jit`` (as it is under a gradual schedule).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from jaxsparse.pruning.patterns import NM, Block, Channel, Pattern, Unstructured, parse_pattern

BLOCK_SCORES = ("l2", "l1", "mean")


def is_concrete(x) -> bool:
    """True for a Python number or a concrete (non-traced) array."""
    return isinstance(x, numbers.Number) or not isinstance(x, jax.core.Tracer)


def check_sparsity(pattern: Pattern, sparsity, where: str = "") -> None:
    """Validates ``sparsity`` for ``pattern`` (skipped for traced values).

    Raises:
        ValueError: for a value outside [0, 1), a missing value, or a value that contradicts
            an N:M pattern.
    """
    at = f" for {where}" if where else ""
    if isinstance(pattern, NM):
        if sparsity is not None and is_concrete(sparsity) and \
                abs(float(sparsity) - (1 - pattern.density)) > 1e-6:
            raise ValueError(f"sparsity={float(sparsity)}{at} contradicts pattern {pattern}, "
                             f"whose sparsity is {1 - pattern.density:g} by definition; pass "
                             f"sparsity=None.")
        return
    if sparsity is None:
        raise ValueError(f"pattern {pattern}{at} needs a sparsity in [0, 1); got None.")
    if is_concrete(sparsity) and not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity={float(sparsity)}{at} is not valid; use a value in [0, 1).")


def incompatibility(shape: tuple[int, ...], pattern: Pattern) -> str | None:
    """Why a weight of ``shape`` cannot take ``pattern``, or ``None`` when it can."""
    if len(shape) < 2 and not isinstance(pattern, Unstructured):
        return f"pattern {pattern} needs a weight with ndim >= 2 (got shape {shape})"
    if isinstance(pattern, NM) and shape[-2] % pattern.m:
        return (f"its reduction dimension {shape[-2]} (axis -2 of shape {shape}) is not "
                f"divisible by M={pattern.m}")
    if isinstance(pattern, Block):
        k = 1
        for d in shape[:-1]:
            k *= d
        if k % pattern.bh or shape[-1] % pattern.bw:
            return (f"block {pattern.bh}x{pattern.bw} does not tile its GEMM view ({k}, "
                    f"{shape[-1]}) of shape {shape}")
    return None


def keep_top(scores: jax.Array, k) -> jax.Array:
    """Boolean mask keeping the ``k`` largest of a 1-D ``scores`` (stable: lower index wins)."""
    order = jnp.argsort(-scores, stable=True)
    rank = jnp.zeros(scores.shape, jnp.int32).at[order].set(jnp.arange(scores.size,
                                                                         dtype=jnp.int32))
    return rank < k


def keep_count(n: int, sparsity) -> jax.Array:
    """Number of units kept out of ``n`` at ``sparsity`` (rounded to nearest)."""
    return jnp.round((1.0 - jnp.asarray(sparsity, jnp.float32)) * n).astype(jnp.int32)


def nm_mask(scores: jax.Array, pattern: NM) -> jax.Array:
    """Keeps the N highest scores in each group of M along axis -2."""
    *lead, cin, cout = scores.shape
    g = scores.reshape(*lead, cin // pattern.m, pattern.m, cout)
    order = jnp.argsort(-g, axis=-2, stable=True)
    rank = jnp.argsort(order, axis=-2, stable=True)
    return (rank < pattern.n).reshape(scores.shape)


def block_scores(scores: jax.Array, pattern: Block, reduce: str = "l2") -> jax.Array:
    """Per-block score matrix ``(K/bh, cout/bw)`` of the GEMM view of ``scores``."""
    k, cout = scores.size // scores.shape[-1], scores.shape[-1]
    b = scores.reshape(k // pattern.bh, pattern.bh, cout // pattern.bw, pattern.bw)
    if reduce == "l2":
        return jnp.sqrt(jnp.sum(jnp.square(b), axis=(1, 3)))
    if reduce == "l1":
        return jnp.sum(jnp.abs(b), axis=(1, 3))
    return jnp.mean(jnp.abs(b), axis=(1, 3))


def expand_blocks(block_mask: jax.Array, pattern: Block, shape: tuple[int, ...]) -> jax.Array:
    """Expands a ``(K/bh, cout/bw)`` block mask to a full mask of ``shape``."""
    full = jnp.repeat(jnp.repeat(block_mask, pattern.bh, axis=0), pattern.bw, axis=1)
    return full.reshape(shape)


def channel_scores(scores: jax.Array) -> jax.Array:
    """L2 norm of each output filter ``scores[..., c]``."""
    return jnp.sqrt(jnp.sum(jnp.square(scores.reshape(-1, scores.shape[-1])), axis=0))


def channel_keep(scores: jax.Array, sparsity, multiple: int = 1) -> jax.Array:
    """Bool ``(C,)``: the top channels by ``scores``, the count rounded to ``multiple``."""
    c = scores.shape[0]
    k = keep_count(c, sparsity)
    if multiple > 1:
        k = jnp.round(k / multiple).astype(jnp.int32) * multiple
    return keep_top(scores, jnp.clip(k, min(multiple, c), c))


def compute_mask(w: jax.Array, pattern: str | Pattern, sparsity=None, scores=None, *,
                 block_score: str = "l2", name: str = "weight",
                 channel_multiple: int = 1) -> jax.Array:
    """Boolean mask of ``w.shape`` that keeps the highest-scoring weights under ``pattern``.

    Args:
        w: the weight, ``(..., cin, cout)``.
        pattern: a pattern or its string (``"2:4"``, ``"block:16x16"``, ``"channel"``, ...).
        sparsity: fraction removed, in [0, 1); must be None (or 1 - N/M) for N:M. May be a
            traced scalar under ``jax.jit``.
        scores: importance of each weight (same shape as ``w``); default ``|w|``.
        block_score: how a block's scores combine: ``"l2"`` (default), ``"l1"`` or ``"mean"``.
        name: the weight's name, used in error messages.
        channel_multiple: channel pattern: round the kept filter count to this multiple.

    Returns:
        A bool array, True where the weight is kept. Unstructured, block and channel masks keep
        exactly ``round((1 - sparsity) * units)`` elements, blocks or filters (channel keeps at
        least one filter).

    Raises:
        ValueError: for a bad pattern, sparsity, score shape, or a shape the pattern cannot tile.
    """
    pattern = parse_pattern(pattern)
    check_sparsity(pattern, sparsity, name)
    if block_score not in BLOCK_SCORES:
        raise ValueError(f"block_score={block_score!r} is not valid; use one of {BLOCK_SCORES}.")
    if (why := incompatibility(tuple(w.shape), pattern)) is not None:
        raise ValueError(f"{name}: cannot apply {pattern}: {why}.")
    s = jnp.abs(w) if scores is None else jnp.asarray(scores)
    if s.shape != w.shape:
        raise ValueError(f"{name}: scores shape {s.shape} differs from weight shape {w.shape}.")
    s = s.astype(jnp.float32)
    if isinstance(pattern, NM):
        return nm_mask(s, pattern)
    if isinstance(pattern, Unstructured):
        return keep_top(s.ravel(), keep_count(s.size, sparsity)).reshape(w.shape)
    if isinstance(pattern, Block):
        bs = block_scores(s, pattern, block_score)
        keep = keep_top(bs.ravel(), keep_count(bs.size, sparsity)).reshape(bs.shape)
        return expand_blocks(keep, pattern, w.shape)
    assert isinstance(pattern, Channel)
    return jnp.broadcast_to(channel_keep(channel_scores(s), sparsity, channel_multiple), w.shape)
