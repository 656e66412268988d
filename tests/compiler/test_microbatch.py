"""Micro-batching (compiler/microbatch.py): the rows proof, the choice of size, and
js.sparsify running the batch in chunks equal to the masked model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse.compiler import costs, engine, microbatch, stages
from tests.helpers import assert_close, masked_reference, resnet


def _why(fn, variables, *args):
    closed, _, _ = engine.trace(fn, variables, *args)
    batch = jax.tree.leaves(args)[0].shape[0]
    return microbatch.why_not_separable(closed, len(jax.tree.leaves(variables)), batch)


def _batch_of_4(hw=64):
    apply_fn, variables, x = resnet(True, "imagenet")
    x4 = jax.random.normal(jax.random.key(3), (4, hw, hw, 3))
    return apply_fn, variables, x4


def test_an_inference_resnet_is_row_separable_and_its_layers_measured():
    apply_fn, variables, x = _batch_of_4()
    why, row_bytes = _why(apply_fn, variables, x)
    assert why is None
    # The largest layer (the stem conv: 64x64x3 in, 32x32x(64*width) out) bounds it below.
    assert row_bytes >= 4 * (64 * 64 * 3 + 32 * 32 * 32)


W = {"w": jnp.ones((5, 3))}


@pytest.mark.parametrize("fn,why", [
    (lambda v, x: (x - x.mean(axis=0)) @ v["w"], "reduces over the batch axis"),
    (lambda v, x: x.reshape(-1) @ jnp.ones((x.size, 3)), "merges or splits the batch axis"),
    (lambda v, x: (x + jnp.arange(x.shape[0], dtype=x.dtype)[:, None]) @ v["w"],
     "constant that varies along the batch axis"),
    (lambda v, x: jnp.cumsum(x, axis=0) @ v["w"], "works along the batch axis"),
    (lambda v, x: jnp.ones((3, 4)) @ x, "contracts the batch axis"),
    (lambda v, x: x.T @ x, "multiplies two activations along their batch axes"),
    (lambda v, x: jnp.sort(x, axis=0) @ v["w"], "works along the batch axis"),
    (lambda v, x: jnp.roll(x, 1, axis=0) @ v["w"], "slices the batch axis"),
    (lambda v, x: (x @ v["w"]).sum(), "reduces over the batch axis"),
    (lambda v, x: jax.lax.fori_loop(0, 2, lambda i, a: a * 2, x) @ v["w"], "no rule"),
])
def test_functions_that_mix_rows_are_named(fn, why):
    got, _ = _why(fn, W, jnp.ones((4, 5)))
    assert got is not None and why in got


@pytest.mark.parametrize("fn", [
    lambda v, x: jax.nn.relu(x @ v["w"]) * 2.0 + jnp.ones((3,)),
    lambda v, x: jnp.concatenate([x, x * 2], axis=1)[:, :5] @ v["w"],
    lambda v, x: jax.nn.softmax(x @ v["w"], axis=-1),
    lambda v, x: jnp.transpose(x[:, None, :] * jnp.ones((1, 2, 1)), (0, 2, 1)).sum(-1) @ v["w"],
    lambda v, x: jnp.einsum("bi,bj->bij", x, x).sum(-1) @ v["w"],  # Two activations, rowwise.
])
def test_rowwise_functions_are_separable(fn):
    assert _why(fn, W, jnp.ones((4, 5)))[0] is None


def test_an_output_without_the_batch_axis_first_is_refused():
    got, _ = _why(lambda v, x: (x @ v["w"]).T, W, jnp.ones((4, 5)))
    assert got is not None and "not batched on its first axis" in got


MIB = 2**20


@pytest.mark.parametrize("row_mib,cache_mib,size", [
    (4.6, 32, 2),    # ResNet-50 at 224 on a 32 MiB L3: two examples at a time.
    (4.6, 64, 4),
    (0.1, 32, 16),   # It all fits: the whole batch.
    (40.0, 32, 16),  # Not even one example fits: splitting would not keep it in cache.
])
def test_auto_takes_the_largest_divisor_that_fits_half_of_l3(row_mib, cache_mib, size):
    mb = microbatch.choose("auto", 16, "", None, int(row_mib * MIB), "cpu",
                           cache_bytes=cache_mib * MIB)
    assert (mb.size, mb.batch) == (size, 16)
    assert ("at a time" in mb.note) == (size < 16)


def test_auto_without_calibrate_keeps_the_whole_batch_and_says_what_it_would_measure():
    mb = microbatch.choose("auto", 16, "", None, int(4.6 * MIB), "cpu", calibrate=False,
                           cache_bytes=32 * MIB)
    assert (mb.size, mb.measure) == (16, False) and "calibrate=True measures" in mb.note
    mb = microbatch.choose("auto", 16, "", None, int(4.6 * MIB), "cpu", cache_bytes=32 * MIB)
    assert (mb.size, mb.measure) == (2, True)
    assert not microbatch.choose(2, 16, "", None, MIB, "cpu", cache_bytes=32 * MIB).measure


def test_auto_keeps_the_whole_batch_where_it_cannot_or_should_not_split():
    assert microbatch.choose("auto", 16, "", None, 5 * MIB, "tpu",
                             cache_bytes=32 * MIB).size == 16
    mb = microbatch.choose("auto", 16, "", "sub mixes", 5 * MIB, "cpu", cache_bytes=32 * MIB)
    assert mb.size == 16 and "sub mixes" in mb.note
    mb = microbatch.choose("auto", 16, "", None, 5 * MIB, "cpu", cache_bytes=0)
    assert mb.size == 16 and "not known" in mb.note
    assert microbatch.choose(None, 16, "", None, 5 * MIB, "cpu", cache_bytes=32 * MIB).size == 16


@pytest.mark.parametrize("request_,match", [
    (3, "does not divide the batch 16; use one of \\[1, 2, 4, 8, 16\\]"),
    (0, "is not valid"), (-2, "is not valid"), ("some", "is not valid"), (True, "is not valid"),
    (2.0, "is not valid"),
])
def test_bad_requests_raise_one_clear_error(request_, match):
    with pytest.raises(ValueError, match=match):
        microbatch.choose(request_, 16, "", None, MIB, "cpu", cache_bytes=32 * MIB)


def test_an_explicit_size_on_a_function_that_mixes_rows_raises():
    with pytest.raises(ValueError, match="rows are not independent: reduce_sum"):
        microbatch.choose(2, 16, "", "reduce_sum reduces over the batch axis", MIB, "cpu")


@pytest.mark.parametrize("pattern", [None, "block:8x8", "unstructured", "channel"])
def test_sparsify_in_chunks_equals_the_masked_model(pattern):
    apply_fn, variables, x = _batch_of_4()
    masks = None if pattern is None else js.prune(variables["params"], pattern, 0.5)
    ref = apply_fn(variables, x) if masks is None else \
        masked_reference(apply_fn, variables, masks)(x)
    sp = js.sparsify(apply_fn, variables, masks, x, micro_batch=2, policy="sparse"
                     if pattern in ("block:8x8", "unstructured") else "auto")
    got = jax.jit(sp)(sp.variables, x)
    assert got.shape == ref.shape
    assert_close(got, ref)
    r = sp.report
    assert (r.batch, r.micro_batch) == (4, 2)
    assert r.as_dict()["micro_batch"] == 2 and "2 of 4 examples at a time" in str(r)
    assert "scan" in str(jax.make_jaxpr(sp)(sp.variables, x))  # It runs as a loop of chunks.


def test_sparsify_auto_on_small_activations_keeps_the_whole_batch(monkeypatch):
    monkeypatch.setattr(microbatch, "l3_cache_bytes", lambda: 32 * MIB)
    apply_fn, variables, x = _batch_of_4()
    sp = js.sparsify(apply_fn, variables, None, x)
    assert (sp.report.batch, sp.report.micro_batch) == (4, 4)
    assert "the whole batch: its largest layer's activations fit" in str(sp.report)
    assert "scan" not in str(jax.make_jaxpr(sp)(sp.variables, x))


def test_auto_with_calibrate_keeps_the_split_only_if_it_measures_faster(monkeypatch):
    """An L3 so small that "auto" proposes chunks of 2: both models are compiled and timed;
    the one kept equals the masked model and its report gives both times."""
    apply_fn, variables, x = _batch_of_4()
    closed, _, _ = engine.trace(apply_fn, variables, x)
    _, row_bytes = microbatch.why_not_separable(closed, len(jax.tree.leaves(variables)), 4)
    monkeypatch.setattr(microbatch, "l3_cache_bytes", lambda: int(2 * 2.5 * row_bytes))
    masks = js.prune(variables["params"], "block:8x8", 0.5)
    sp = js.sparsify(apply_fn, variables, masks, x, calibrate=True)
    r = sp.report
    assert r.micro_batch in (2, 4) and "measured" in r.micro_batch_note
    assert ("2 of 4 examples at a time" in r.micro_batch_note) == (r.micro_batch == 2)
    assert_close(jax.jit(sp)(sp.variables, x), masked_reference(apply_fn, variables, masks)(x))


def test_a_micro_batched_model_checks_the_whole_batch_shape():
    apply_fn, variables, x = _batch_of_4()
    sp = js.sparsify(apply_fn, variables, None, x, micro_batch=1)
    with pytest.raises(ValueError, match="compiled for inputs"):
        sp(sp.variables, x[:2])
    np.testing.assert_allclose(np.asarray(sp(sp.variables, x)), np.asarray(apply_fn(variables, x)),
                               rtol=1e-5, atol=1e-5)


def test_sparsify_refuses_to_split_a_batch_statistics_model():
    def fn(v, x):  # A training-mode BatchNorm: statistics of the batch.
        h = x @ v["w"]
        return (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5)

    x = jax.random.normal(jax.random.key(0), (4, 5))
    with pytest.raises(ValueError, match="cannot split this function's batch"):
        js.sparsify(fn, W, None, x, micro_batch=2)
    sp = js.sparsify(fn, W, None, x)  # "auto": the whole batch, and the report says why.
    assert sp.report.micro_batch == 4 and "not independent" in sp.report.micro_batch_note
    np.testing.assert_allclose(np.asarray(sp(sp.variables, x)), np.asarray(fn(W, x)), rtol=1e-5,
                               atol=1e-6)


def _small_l3(monkeypatch, variables, x):
    """An L3 so small that "auto" proposes chunks of 2 for the batch of 4."""
    closed, _, _ = engine.trace(_batch_of_4()[0], variables, x)
    _, row_bytes = microbatch.why_not_separable(closed, len(jax.tree.leaves(variables)), 4)
    monkeypatch.setattr(microbatch, "l3_cache_bytes", lambda: int(2 * 2.5 * row_bytes))


def test_layers_before_counts_the_layers_at_each_block_end():
    apply_fn, variables, x = _batch_of_4()
    closed, _, _ = engine.trace(apply_fn, variables, x)
    n = len(jax.tree.leaves(variables))
    points, layers = stages.layers_before(closed, n, 4)
    cuts = engine.cuts(closed, n)
    assert points and all(k in cuts and k + 1 not in cuts for k in points)
    assert layers == sorted(layers) and layers[-1] == 18  # The tiny ResNet's 18 conv/dots.
    assert 1 in layers and 5 in layers  # After the stem; after the first block (4 convs).


@pytest.mark.parametrize("chunk_ms,want", [
    # Layers 0-1 faster in chunks (2 x 1 < 3), layers 2-3 slower (2 x 2 > 1): cut after 2.
    ([1, 1, 2, 2], 20),
    # Every layer faster in chunks: the best cut is still timed beside all-chunks.
    ([0.25] * 4, 30),
    ([2, 2, 2, 2], None),  # None faster: the whole batch.
])
def test_best_cut_splits_where_the_measured_layers_say(chunk_ms, want):
    whole_ms = [3.0, 3.0, 1.0, 1.0]
    assert stages.best_cut([10, 20, 30], [1, 2, 3], whole_ms, chunk_ms, 2) == want
    assert stages.best_cut([10], [1], whole_ms, chunk_ms[:3], 2) is None  # Rows differ.


@pytest.mark.parametrize("pattern", [None, "block:8x8", "unstructured", "channel"])
def test_auto_can_run_the_first_layers_in_chunks_and_the_rest_whole(monkeypatch, pattern):
    """With times that favour it, "auto" keeps the model whose first stage runs in chunks of
    2 and the rest on the whole batch: equal to the masked model, its rows saying which
    layers run twice a call, its FLOPs those of the whole batch."""
    apply_fn, variables, x = _batch_of_4()
    _small_l3(monkeypatch, variables, x)
    seen = []

    def cut_in_the_middle(points, layers, whole_ms, chunk_ms, chunks):
        seen.append((len(whole_ms), len(chunk_ms), chunks))
        return points[len(points) // 2]

    monkeypatch.setattr(stages, "best_cut", cut_in_the_middle)
    # Every measurement: each later candidate faster (sparse over dense, split over whole).
    monkeypatch.setattr(costs, "measure", lambda calls, *a, **k: [3.0, 2.0, 1.0][:len(calls)])
    masks = None if pattern is None else js.prune(variables["params"], pattern, 0.5)
    policy = "sparse" if pattern in ("block:8x8", "unstructured") else "auto"
    sp = js.sparsify(apply_fn, variables, masks, x, calibrate=True, policy=policy)
    ref = apply_fn(variables, x) if masks is None else \
        masked_reference(apply_fn, variables, masks)(x)
    assert_close(jax.jit(sp)(sp.variables, x), ref)
    r = sp.report
    runs = [row.runs for row in r.rows]
    first = runs.index(1)
    assert 0 < first < len(runs) and set(runs[:first]) == {2} and set(runs[first:]) == {1}
    assert (r.batch, r.micro_batch) == (4, 2)
    assert "with the first layers in chunks" in r.micro_batch_note
    assert f"through {r.rows[first - 1].name}" in r.micro_batch_note
    assert f"{first} of the {len(runs)} layers above run 2 times a call" in str(r)
    assert str(jax.make_jaxpr(sp)(sp.variables, x)).count("scan[") == 1
    assert seen == [(len(runs), len(runs), 2)]
    whole = js.sparsify(apply_fn, variables, masks, x, calibrate=True, policy=policy,
                        micro_batch=None)
    assert r.flops_before == pytest.approx(whole.report.flops_before)
    assert r.flops_after == pytest.approx(whole.report.flops_after)
