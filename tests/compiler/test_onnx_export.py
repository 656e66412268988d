"""The ONNX export of the external baselines equals the JAX model, in ONNX Runtime and OpenVINO.

Skipped (with the reason) where the extra ``baselines`` is not installed; ``scripts/test.sh``
installs it, so CI runs them.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxsparse.compiler.onnx_export import export_onnx
from jaxsparse.study import baselines
from jaxsparse.study.speed import relative_error
from tests.helpers import resnet

onnx = pytest.importorskip("onnx", reason="extra 'baselines' (onnx) not installed")


def _ort(model):
    ort = pytest.importorskip("onnxruntime", reason="extra 'baselines' (onnxruntime) not "
                                                    "installed")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"x": np.asarray(x)})[0]


@pytest.mark.parametrize("bottleneck,stem", [(False, "small"), (True, "imagenet")])
def test_resnet_export_equals_the_jax_model(bottleneck, stem):
    apply_fn, variables, x = resnet(bottleneck, stem)
    fn = lambda v, a: apply_fn(v, a)  # noqa: E731
    model = export_onnx(fn, variables, x)
    ops = [n.op_type for n in model.graph.node]
    # NHWC in, NCHW inside: one transpose at the start, none between the convs.
    assert ops.count("Transpose") == 1 and ops.count("Conv") >= 5
    assert ("MaxPool" in ops) == (stem == "imagenet")
    assert relative_error(_ort(model)(x), jax.jit(fn)(variables, x)) < 1e-4


def test_openvino_runs_the_export_like_the_jax_model():
    pytest.importorskip("openvino", reason="extra 'baselines' (openvino) not installed")
    apply_fn, variables, x = resnet(True, "imagenet")
    fn = lambda v, a: apply_fn(v, a)  # noqa: E731
    (ov,) = baselines.prepare(["openvino"], lambda: export_onnx(fn, variables, x), threads=1)
    assert ov.run is not None and ov.version
    assert relative_error(ov.run(np.asarray(x)), fn(variables, x)) < 1e-4


class _LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), strides=2, padding="SAME")(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        x = nn.Conv(4, (1, 1), feature_group_count=2)(x)
        x = jnp.tanh(x).reshape((x.shape[0], -1))
        return nn.Dense(5)(x)


def test_linen_net_export():
    net = _LinenNet()
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 4))
    variables = net.init(jax.random.key(1), x)
    variables = jax.tree.map(lambda v: v + 0.2, variables)  # Non-trivial statistics.
    model = export_onnx(net.apply, variables, x)
    assert relative_error(_ort(model)(x), net.apply(variables, x)) < 1e-4


def test_plain_jax_nchw_function_with_transposes():
    """Other layouts: an NCHW conv, a transpose the export absorbs, a transposed weight, a
    mean over the spatial axes."""
    k = jax.random.split(jax.random.key(0), 3)
    w = {"conv": jax.random.normal(k[0], (6, 3, 3, 3)), "fc": jax.random.normal(k[1], (7, 6)),
         "shift": jax.random.normal(k[2], (6, 1, 1))}

    def fn(w, x):
        y = lax.conv_general_dilated(x, w["conv"], (1, 1), [(1, 1), (0, 2)],
                                     rhs_dilation=(2, 1), dimension_numbers=("NCHW", "OIHW",
                                                                             "NCHW"))
        y = jax.nn.sigmoid(y - w["shift"]) * 2.0
        y = jnp.transpose(y, (0, 2, 3, 1)).mean(axis=(1, 2))  # (N, C)
        return lax.dot_general(y, w["fc"], (((1,), (1,)), ((), ())))

    x = jax.random.normal(jax.random.key(3), (2, 3, 10, 9))
    model = export_onnx(fn, w, x)
    assert relative_error(_ort(model)(x), fn(w, x)) < 1e-4


def test_unsupported_primitive_and_dtype_are_named():
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match="no rule for primitive 'cumsum'"):
        export_onnx(lambda v, a: jnp.cumsum(a * v["s"], axis=1), {"s": jnp.ones(4)}, x)
    with pytest.raises(ValueError, match="float32 only"):
        export_onnx(lambda v, a: a, {}, x.astype(jnp.bfloat16))


def test_runtimes_are_checked_and_missing_ones_say_so(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown runtimes \['tensorrt'\]"):
        baselines.check_runtimes("onnxruntime,tensorrt")
    monkeypatch.setattr(baselines, "version", lambda name: None)
    called = []
    rows = baselines.prepare(["onnxruntime", "openvino"], lambda: called.append(1))
    assert [b.run for b in rows] == [None, None] and not called  # Nothing exported.
    assert all(b.why.startswith("not installed") for b in rows)


def test_a_runtime_that_cannot_load_the_model_gets_a_row_saying_why(monkeypatch):
    def broken(model_bytes, threads):
        raise RuntimeError("unsupported opset\nmore detail")
    monkeypatch.setattr(baselines, "version", lambda name: "1.0")
    monkeypatch.setitem(baselines._SESSIONS, "onnxruntime", broken)
    (row,) = baselines.prepare(["onnxruntime"], lambda: onnx.ModelProto())
    assert row.run is None
    assert row.why == "could not load the model: RuntimeError: unsupported opset"
