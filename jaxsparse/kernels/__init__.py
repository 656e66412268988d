"""Kernels by platform (cpu/, gpu/, tpu/), each with a pure-jnp reference beside it; window.py:
the conv window arithmetic and im2col they share."""
