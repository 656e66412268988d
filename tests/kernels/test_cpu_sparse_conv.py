"""The C++ CPU kernels (XLA FFI) against the masked dense convolution (rtol 1e-5, f32).

Every case runs ``block_sparse_dot(impl="cpu")`` and checks that the lowered program really
calls the FFI target (no silent fallback), then compares with ``lax.conv_general_dilated`` on
the masked dense weight.
"""

import ctypes
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax import lax

from jaxsparse.kernels.cpu import library as cpu_library
from jaxsparse.kernels.cpu import sparse_conv as cpu_sparse_conv
from jaxsparse.kernels.window import ConvWindow
from jaxsparse.primitives.block_sparse_dot import (
    block_sparse_dot,
    block_sparse_dot_reference,
    pack_block_ell,
)
from tests.helpers import REPO, run_cli


def make_case(seed, b, h, w, cin, cout, k, bh, bw, density):
    """Random NHWC input and a (k, k, cin, cout) weight masked in bh x bw blocks."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, h, w, cin)).astype(np.float32)
    kernel = rng.standard_normal((k, k, cin, cout)).astype(np.float32)
    kk = k * k * cin
    keep = rng.random((kk // bh, cout // bw)) < density
    keep[0, 0] = True
    mask = np.repeat(np.repeat(keep, bh, 0), bw, 1)
    gemm = kernel.reshape(kk, cout) * mask
    values, rows = pack_block_ell(gemm, mask, bh, bw)
    return x, gemm.reshape(kernel.shape), values, rows


def dense_conv(x, kernel, window):
    return lax.conv_general_dilated(x, kernel, window.strides, window.padding,
                                    rhs_dilation=window.dilation,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


def assert_close(y, ref, rtol=1e-5):
    y, ref = np.asarray(y), np.asarray(ref)
    np.testing.assert_allclose(y, ref, rtol=rtol, atol=rtol * max(1.0, np.abs(ref).max()))


def run_cpu(x, values, rows, window, **epilogue):
    fn = jax.jit(lambda a: block_sparse_dot(a, values, rows, window=window, impl="cpu",
                                            **epilogue))
    kind = cpu_sparse_conv.kernel_kind(values.shape)
    hlo = fn.lower(x).as_text()
    assert f"jaxsparse_{kind}_sparse_conv_f32" in hlo, "FFI call missing"
    if epilogue:  # Fused: nothing of it is left to XLA.
        assert "stablehlo.maximum" not in hlo and "stablehlo.add" not in hlo, hlo[-2000:]
    return fn(x)


def epilogue_operands(seed, out_shape, which):
    """A bias and a residual for an output shape, as ``which`` ("bias,residual,relu") asks."""
    rng = np.random.default_rng(seed)
    got = {}
    if "bias" in which:
        got["bias"] = jnp.asarray(rng.standard_normal(out_shape[-1]), jnp.float32)
    if "residual" in which:
        got["residual"] = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)
    if "relu" in which:
        got["relu"] = True
    return got


def with_epilogue(y, bias=None, residual=None, relu=False):
    y = np.asarray(y, np.float64)
    if bias is not None:
        y = y + np.asarray(bias)
    if residual is not None:
        y = y + np.asarray(residual)
    return np.maximum(y, 0) if relu else y


def test_library_is_built_and_loads():
    st_ = cpu_library.status()
    assert st_.available, st_.reason
    assert st_.path and os.path.isfile(st_.path)


CONV_CASES = [
    # (batch, h, w, cin, cout, k, stride, pad, dilation, bh, bw, density)
    (1, 9, 9, 32, 32, 3, 1, 1, 1, 16, 16, 0.5),
    (3, 7, 8, 64, 48, 3, 2, 1, 1, 32, 16, 0.3),
    (3, 11, 10, 32, 64, 3, 1, 2, 2, 16, 32, 0.4),
    (1, 6, 6, 16, 8, 1, 1, 0, 1, 8, 8, 0.5),
    (3, 6, 7, 16, 16, 1, 2, 0, 1, 16, 16, 0.5),
    (3, 13, 13, 8, 24, 5, 2, 2, 1, 8, 8, 0.6),
    (1, 9, 9, 32, 32, 3, 1, 1, 1, 1, 1, 0.1),
    (3, 7, 8, 13, 48, 3, 2, 1, 1, 1, 1, 0.3),
    (3, 11, 11, 32, 70, 3, 1, 2, 2, 1, 1, 0.2),
    (1, 5, 5, 16, 7, 1, 1, 0, 1, 1, 1, 0.5),
    (3, 6, 6, 16, 16, 1, 2, 0, 1, 1, 1, 0.9),
    # Few input channels: a block spans whole taps of one kernel row (a run partly in the
    # padding is gathered): an RGB stem's 7 taps x 3 channels, 2 of 4 taps x 4 channels.
    (2, 17, 16, 3, 32, 7, 2, 3, 1, 21, 32, 0.7),
    (2, 8, 9, 4, 16, 4, 1, 2, 1, 8, 16, 0.6),
]


@pytest.mark.parametrize("b,h,w,cin,cout,k,s,pad,d,bh,bw,density", CONV_CASES)
def test_conv_equals_masked_dense(b, h, w, cin, cout, k, s, pad, d, bh, bw, density):
    x, kernel, values, rows = make_case(0, b, h, w, cin, cout, k, bh, bw, density)
    window = ConvWindow((k, k), (s, s), ((pad, pad), (pad, pad)), (d, d))
    assert_close(run_cpu(x, values, rows, window), dense_conv(x, kernel, window))


def test_asymmetric_padding_and_all_padding_blocks():
    x, kernel, values, rows = make_case(1, 2, 8, 8, 16, 16, 3, 16, 16, 0.5)
    window = ConvWindow((3, 3), (2, 2), ((0, 1), (1, 0)), (1, 1))
    assert_close(run_cpu(x, values, rows, window), dense_conv(x, kernel, window))
    # A column with no stored block at all computes zeros.
    empty = np.full_like(rows, -1)
    y = run_cpu(x, np.zeros_like(values), empty, window)
    assert not np.any(np.asarray(y))


@pytest.mark.parametrize("bh,bw", [(16, 16), (1, 1)])
def test_dense_layer(bh, bw):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    w = rng.standard_normal((64, 48)).astype(np.float32)
    mask = rng.random((64 // bh, 48 // bw)) < 0.3
    mask = np.repeat(np.repeat(mask, bh, 0), bw, 1)
    values, rows = pack_block_ell(w * mask, mask, bh, bw)
    fn = jax.jit(lambda a: block_sparse_dot(a, values, rows, impl="cpu"))
    assert_close(fn(x), x @ (w * mask))
    assert_close(fn(x[None])[0], x @ (w * mask))  # Leading axes fold into rows.


@pytest.mark.parametrize("bh,bw", [(16, 16), (1, 1)])
def test_vmap_and_gradients(bh, bw):
    x, kernel, values, rows = make_case(3, 3, 7, 7, 16, 32, 3, bh, bw, 0.4)
    window = ConvWindow((3, 3), (1, 1), ((1, 1), (1, 1)))
    f = lambda a, v: block_sparse_dot(a, v, rows, window=window, impl="cpu")
    ref = lambda a, v: block_sparse_dot_reference(a, v, rows, window)
    xs = np.stack([x, 2 * x])
    assert_close(jax.jit(jax.vmap(lambda a: f(a, values)))(xs),
                 np.stack([dense_conv(x, kernel, window), 2 * dense_conv(x, kernel, window)]))
    loss = lambda fn: (lambda a, v: jnp.sum(jnp.sin(fn(a, v))))
    got = jax.jit(jax.grad(loss(f), argnums=(0, 1)))(x, values)
    want = jax.grad(loss(ref), argnums=(0, 1))(x, values)
    for g, r in zip(got, want, strict=True):
        assert_close(g, r, rtol=1e-4)
    assert np.all(np.asarray(got[1])[np.asarray(rows) < 0] == 0), "padding gets no gradient"


@pytest.mark.parametrize("bh,bw", [(8, 8), (1, 1)])
def test_vmap_and_gradients_with_an_epilogue(bh, bw):
    """A call with a bias, residual and ReLU batches and differentiates (through the product
    and the epilogue in jnp) like the reference with the same epilogue."""
    x, _, values, rows = make_case(5, 2, 7, 7, 16, 32, 3, bh, bw, 0.4)
    window = ConvWindow((3, 3), (1, 1), ((1, 1), (1, 1)))
    ep = epilogue_operands(2, (2, 7, 7, 32), "bias,residual")
    f = lambda a, v, b, r: block_sparse_dot(a, v, rows, window=window, impl="cpu", bias=b,
                                            residual=r, relu=True)
    ref = lambda a, v, b, r: block_sparse_dot_reference(a, v, rows, window, bias=b,
                                                        residual=r, relu=True)
    args = (x, values, ep["bias"], ep["residual"])
    xs, rs = np.stack([x, 2 * x]), np.stack([ep["residual"], -ep["residual"]])
    batched = lambda fn: jax.vmap(lambda a, r: fn(a, values, ep["bias"], r))  # noqa: E731
    assert_close(jax.jit(batched(f))(xs, rs), batched(ref)(xs, rs))
    loss = lambda fn: (lambda *a: jnp.sum(jnp.sin(fn(*a))))  # noqa: E731
    got = jax.jit(jax.grad(loss(f), argnums=(0, 1, 2, 3)))(*args)
    want = jax.grad(loss(ref), argnums=(0, 1, 2, 3))(*args)
    for g, r in zip(got, want, strict=True):
        assert_close(g, r, rtol=1e-4)


@settings(max_examples=12, deadline=None)
@given(b=st.integers(1, 3), hw=st.integers(3, 10), cin_mult=st.integers(1, 4),
       cout_mult=st.integers(1, 4), k=st.sampled_from([1, 2, 3]), s=st.integers(1, 2),
       pad=st.integers(0, 2), d=st.integers(1, 2), blocks=st.sampled_from([(8, 8), (1, 1)]),
       density=st.floats(0.05, 1.0), seed=st.integers(0, 100))
def test_hypothesis_shapes(b, hw, cin_mult, cout_mult, k, s, pad, d, blocks, density, seed):
    bh, bw = blocks
    cin, cout = 8 * cin_mult - (3 if bh == 1 else 0), 8 * cout_mult + (1 if bw == 1 else 0)
    assume(hw + 2 * pad - (k - 1) * d - 1 >= 0)  # A window that fits the padded input.
    x, kernel, values, rows = make_case(seed, b, hw, hw, cin, cout, k, bh, bw, density)
    window = ConvWindow((k, k), (s, s), ((pad, pad), (pad, pad)), (d, d))
    assert_close(run_cpu(x, values, rows, window), dense_conv(x, kernel, window))


def test_unsupported_calls_are_clear_errors():
    x, _, values, rows = make_case(0, 1, 5, 5, 16, 16, 3, 16, 16, 0.5)
    window = ConvWindow((3, 3), padding=((1, 1), (1, 1)))
    with pytest.raises(ValueError, match="bfloat16"):
        block_sparse_dot(x.astype(jnp.bfloat16), values, rows, window=window, impl="cpu")
    v4 = np.zeros((4, 36, 4, 4), np.float32)
    with pytest.raises(ValueError, match="4x4 blocks"):
        block_sparse_dot(x, v4, np.zeros((4, 36), np.int32), window=window, impl="cpu")
    # Blocks spanning taps (3 channels, 21-high) need adjacent taps: no dilation.
    x3, _, v3, r3 = make_case(0, 1, 9, 9, 3, 32, 7, 21, 32, 0.5)
    dilated = ConvWindow((7, 7), padding=((6, 6), (6, 6)), dilation=(2, 2))
    with pytest.raises(ValueError, match="block height 21 neither divides the 3 input"):
        block_sparse_dot(x3, v3, r3, window=dilated, impl="cpu")


def test_missing_library_falls_back_with_a_reason(monkeypatch):
    monkeypatch.setattr(cpu_library, "library_path", lambda: None)
    st_ = cpu_library.status.__wrapped__()
    assert not st_.available and "was not built" in st_.reason and "pip install" in st_.reason
    monkeypatch.setenv(cpu_library.DISABLE_ENV, "1")
    assert "disabled" in cpu_library.status.__wrapped__().reason


def test_failed_build_is_reported_and_not_fatal(tmp_path):
    """setup.py's build with a compiler that fails: a clear message, and the build goes on."""
    env = {**os.environ, "CXX": "false", "CC": "false"}
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib",
                           str(tmp_path / "lib"), "--build-temp", str(tmp_path / "tmp")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "portable XLA lowerings will be used" in proc.stdout + proc.stderr
    assert not list((tmp_path / "lib").rglob("_cpu_kernels*"))


def test_build_from_source(tmp_path):
    """setup.py builds a library that loads and exports both handlers."""
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib",
                           str(tmp_path / "lib"), "--build-temp", str(tmp_path / "tmp")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (lib,) = (tmp_path / "lib").rglob("_cpu_kernels*")

    handle = ctypes.cdll.LoadLibrary(str(lib))
    for symbol in cpu_library.TARGETS.values():
        assert getattr(handle, symbol)


EPILOGUES = ["bias", "relu", "residual", "bias,residual,relu"]


@pytest.mark.parametrize("which", EPILOGUES)
@pytest.mark.parametrize("b,h,w,cin,cout,k,s,pad,d,bh,bw,density", CONV_CASES)
def test_epilogue_in_the_kernel_equals_the_separate_ops(b, h, w, cin, cout, k, s, pad, d, bh,
                                                        bw, density, which):
    """relu?(conv + bias + residual) computed in the kernel's store equals the masked dense
    conv followed by the same ops (and the lowered program has none of them left)."""
    x, kernel, values, rows = make_case(7, b, h, w, cin, cout, k, bh, bw, density)
    window = ConvWindow((k, k), (s, s), ((pad, pad), (pad, pad)), (d, d))
    ref = dense_conv(x, kernel, window)
    ep = epilogue_operands(3, ref.shape, which)
    got = run_cpu(x, values, rows, window, **ep)
    want = with_epilogue(ref, **ep)
    assert_close(got, want)
    if "relu" in which:
        assert np.mean(np.asarray(got) == 0) > 0.2  # The ReLU really clamped something.


def test_epilogue_of_a_dense_layer_and_bad_operands():
    x, kernel, values, rows = make_case(2, 5, 1, 1, 32, 64, 1, 1, 1, 0.2)
    x2 = x.reshape(5, 32)
    ep = epilogue_operands(1, (5, 64), "bias,residual,relu")
    got = block_sparse_dot(x2, values, rows, impl="cpu", **ep)
    assert_close(got, with_epilogue(x2 @ kernel.reshape(32, 64), **ep))
    with pytest.raises(ValueError, match=r"bias has shape \(3,\), not \(64,\)"):
        block_sparse_dot(x2, values, rows, impl="cpu", bias=jnp.zeros(3))
    with pytest.raises(ValueError, match="residual has shape"):
        block_sparse_dot(x2, values, rows, impl="cpu", residual=jnp.zeros((5, 63)))


@pytest.mark.parametrize("env", [{"JAXSPARSE_CPU_ISA": "scalar"}, {"JAXSPARSE_CPU_ISA": "avx2"},
                                 {"JAXSPARSE_CPU_STREAM": "1"},
                                 {"JAXSPARSE_CPU_ISA": "avx2", "JAXSPARSE_CPU_STREAM": "1"}])
def test_every_instruction_set_path(env):
    """JAXSPARSE_CPU_ISA caps the kernels' instruction set: the scalar and AVX2 code paths
    (not only the best one of this CPU) equal the masked dense conv too, with and without
    the epilogue. These cases' activations fit in L3, so by default they store with cached
    stores; JAXSPARSE_CPU_STREAM=1 runs the SIMD paths with streaming stores, which must give
    the same result."""
    code = (
        "from tests.kernels.test_cpu_sparse_conv import CONV_CASES, make_case, run_cpu, "
        "dense_conv, assert_close, epilogue_operands, with_epilogue\n"
        "from jaxsparse.kernels.window import ConvWindow\n"
        "for b, h, w, cin, cout, k, s, pad, d, bh, bw, dens in CONV_CASES:\n"
        "    x, kernel, values, rows = make_case(0, b, h, w, cin, cout, k, bh, bw, dens)\n"
        "    win = ConvWindow((k, k), (s, s), ((pad, pad), (pad, pad)), (d, d))\n"
        "    ref = dense_conv(x, kernel, win)\n"
        "    assert_close(run_cpu(x, values, rows, win), ref)\n"
        "    ep = epilogue_operands(1, ref.shape, 'bias,residual,relu')\n"
        "    assert_close(run_cpu(x, values, rows, win, **ep), with_epilogue(ref, **ep))\n"
        "print('ok', len(CONV_CASES))\n")
    proc = run_cli(["-c", code], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"ok {len(CONV_CASES)}" in proc.stdout


@pytest.mark.parametrize("bh,bw", [(16, 16), (1, 1)])
def test_padding_anywhere_and_out_of_range_rows_are_skipped(bh, bw):
    """Indices are data the kernel cannot trust: -1 in the middle of a column and rows past K
    contribute nothing (as in the reference), and nothing is read out of bounds."""
    x, _, values, rows = make_case(4, 2, 7, 7, 32, 32, 3, bh, bw, 0.5)
    rows = np.array(rows)
    k_blocks = 9 * 32 // bh
    rows[:, 1] = -1
    rows[:, 2] = k_blocks + 7
    rows[0, 0] = np.iinfo(np.int32).max
    window = ConvWindow((3, 3), padding=((1, 1), (1, 1)))
    want = block_sparse_dot_reference(x, values, rows, window)
    assert_close(run_cpu(x, values, rows, window), want)
