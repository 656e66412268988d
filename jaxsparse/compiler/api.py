"""``js.sparsify``: from a masked dense function to one that skips the zeros."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Importing layers registers the layer rule (F401).
from jaxsparse.compiler import costs, engine, layers, microbatch, stages  # noqa: F401
from jaxsparse.compiler import policy as policy_lib
from jaxsparse.compiler.interpreter import MISSING_RULE, Context
from jaxsparse.compiler.packed import is_rewritten, nbytes
from jaxsparse.compiler.report import CompileReport
from jaxsparse.compiler.values import WRef
from jaxsparse.kernels.cpu import library as cpu_library
from jaxsparse.kernels.gpu import cusparselt
from jaxsparse.primitives.block_sparse_dot import IMPLS, check_impl
from jaxsparse.pruning.prune import named_masks
from jaxsparse.pruning.tree_paths import named_leaves, path_str

BACKENDS = ("auto", *IMPLS)
PLATFORMS = ("cpu", "cuda", "tpu", "rocm")  # rocm: portable lowerings only, for now.


def target_platform(platform: str | None) -> str:
    """The platform to compile for: ``platform``, or the local default device's (``"cuda"``
    for an NVIDIA GPU).

    Raises:
        ValueError: for a platform jaxsparse has no lowering choices for.
    """
    if platform is None:
        dev = jax.devices()[0]
        platform = dev.platform
        if platform == "gpu":
            platform = "cuda" if "cuda" in dev.client.platform_version.lower() else "rocm"
    if platform not in PLATFORMS:
        raise ValueError(f"platform={platform!r} is not valid; use one of {PLATFORMS} (or None "
                         f"for the local device).")
    return platform


def resolve_backend(backend: str, platform: str, interpret: bool = False
                    ) -> tuple[str, bool, str]:
    """``(impl, interpret, note)``: the block/unstructured implementation for ``backend`` on
    ``platform``, and why the C++ CPU kernels are not used when they are not.

    ``"auto"`` is ``"cpu"`` on a CPU with the C++ kernels built, ``"pallas"`` on ``cuda`` and
    ``tpu`` (each platform's Pallas kernel), else ``"xla"``; with ``interpret`` it is
    ``"pallas"``.

    Raises:
        ValueError: for an unknown backend, ``interpret`` with a backend other than
            ``"pallas"``/``"auto"``, or ``"cpu"`` when the CPU kernels cannot load.
    """
    if backend == "auto" and interpret:
        backend = "pallas"
    if backend not in (*BACKENDS, "pallas_interpret"):
        raise ValueError(f"backend={backend!r} is not valid; use one of {BACKENDS}.")
    if backend != "auto":
        backend, interpret = check_impl(backend, interpret, stacklevel=5, name="backend")
    st = cpu_library.status()
    note = "" if st.available else st.reason
    if backend == "cpu" and not st.available:
        raise ValueError(f"backend='cpu' needs the jaxsparse CPU kernel library: {st.reason}.")
    if backend == "auto":
        if platform in ("cuda", "tpu"):
            return "pallas", False, ""
        return ("cpu" if platform == "cpu" and st.available else "xla"), False, note
    return backend, interpret, note


def align_masks(variables: Any, masks: Any) -> dict[str, np.ndarray]:
    """``{variables path: mask}`` for masks given for ``variables`` or for its ``"params"``.

    Raises:
        ValueError: if a mask names no leaf of ``variables`` or has another shape.
    """
    leaves = dict(named_leaves(variables))
    out = {}
    for path, m in named_masks(masks):
        target = path if path in leaves else f"params/{path}"
        if target not in leaves:
            raise ValueError(f"masks has an entry {path!r} that is no leaf of variables; give "
                             f"masks with the structure of variables or variables['params'].")
        if tuple(np.shape(m)) != tuple(np.shape(leaves[target])):
            raise ValueError(f"mask for {target} has shape {np.shape(m)}, the weight "
                             f"{np.shape(leaves[target])}.")
        out[target] = np.asarray(m, bool)
    return out


@dataclasses.dataclass(eq=False)
class SparseModel:
    """A compiled sparse function. Call it as ``sp(sp.variables, *args)``; it is jittable
    and vmappable. It is specialised to the shapes and dtypes of the example inputs given to
    :func:`sparsify` (another batch size needs another ``sparsify``, or ``jax.vmap``); a
    micro-batched model runs that batch in chunks (``report.micro_batch`` examples each),
    all of it or its first layers (then the rest on the whole batch).

    Attributes:
        variables: ``{"model": the variables with packed/sliced weights, "folded": constant
            bias maps of removed channels}``; a pytree orbax can checkpoint.
        report: a :class:`CompileReport`, one row per conv/dot layer.
    """

    variables: dict
    report: CompileReport
    _stages: tuple[stages.Stage, ...]
    _out_tree: Any
    _plan: dict
    _options: policy_lib.Options

    def __call__(self, variables: dict, *args: Any) -> Any:
        leaves = jax.tree_util.tree_flatten_with_path(variables["model"],
                                                      is_leaf=is_rewritten)[0]
        vals = [WRef(path_str(p), v, None) if is_rewritten(v) or np.ndim(v) >= 2 else v
                for p, v in leaves]
        flat_args = jax.tree.leaves(args)
        first = self._stages[0]
        expected = [((first.micro.batch, *v.aval.shape[1:]), v.aval.dtype)
                    for v in first.jaxpr.jaxpr.invars[len(leaves):]]
        got = [(tuple(np.shape(a)), jnp.result_type(a)) for a in flat_args]
        if got != expected:
            raise ValueError(f"this SparseModel was compiled for inputs {expected} (shape, dtype) "
                             f"but got {got}; call js.sparsify again with example inputs of the "
                             f"new shape (jax.vmap over extra leading axes works).")
        outs = flat_args
        for stage in self._stages:
            def run(*chunk, stage=stage):  # One micro-batch (or the whole batch).
                ctx = Context(compiling=False, plan=self._plan,
                              folded=variables.get("folded", {}), options=self._options,
                              counter=stage.counter)
                return stage.evaluate(ctx, vals, list(chunk))

            outs = microbatch.run_in_chunks(run, outs, stage.micro)
        return jax.tree.unflatten(self._out_tree, outs)


def affine_folds(seen: dict[str, list], notes: dict[str, str],
                 ) -> tuple[dict[str, tuple], dict[str, str]]:
    """``({key: (scale, shift, affine ops, epilogue)}, {key: why not})``: a layer whose output
    was needed at exactly one point, after at least one op, has those ops folded (per-channel
    affine ops into its weights and bias, a residual add and ReLU into its kernel's
    epilogue); so has one whose output, ending with an epilogue, was needed as that one value
    at several points (a residual block's output: the next block's input and its residual).
    A layer whose output is also read before or beside them keeps them (and says so)."""
    out, why = {}, dict(notes)
    for key, points in seen.items():
        step, scale, shift, epilogue, _ = points[0]
        one = len(points) == 1 or (epilogue and len({p[4] for p in points}) == 1)
        if one and step > 0:
            out[key] = (np.asarray(scale, np.float64), np.asarray(shift, np.float64),
                        step - len(epilogue), epilogue)
            why.pop(key, None)
        elif len(points) > 1 and any(p[0] > 0 for p in points):
            why[key] = f"its output is read at {len(points)} places, not only through them"
    return out, why


def sparsify(apply_fn: Callable[..., Any], variables: Any, masks: Any, *example_args: Any,
            backend: str = "auto", policy: str = "auto",
            calibrate: bool = False, platform: str | None = None,
            missing_rule: str = "error", interpret: bool = False,
            fold_batchnorm: bool = True,
            micro_batch: int | str | None = microbatch.AUTO) -> SparseModel:
    """Rewrites the masked function ``apply_fn(variables * masks, *args)`` to skip its zeros.

    Every ``conv_general_dilated`` and ``dot_general`` whose weight is a leaf of ``variables``
    is visited: removed output channels (all-zero filters) and removed input channels (whose
    producer removed them) are sliced away, following channels through per-channel ops
    (BatchNorm, bias, activations, pooling, residual adds); N:M and block-sparse weights are
    packed and run by :func:`~jaxsparse.primitives.nm_dot` and
    :func:`~jaxsparse.primitives.block_sparse_dot` when the policy's cost model says so.

    Args:
        apply_fn: a pure function ``apply_fn(variables, *args)``.
        variables: its variables pytree (dense weights).
        masks: a masks tree (from :func:`jaxsparse.prune`) for ``variables`` or for
            ``variables["params"]``; ``None`` leaves are dense.
        *example_args: example inputs (their shapes and dtypes are what is compiled for).
        backend: kernel for block-sparse and unstructured layers: ``"auto"`` (``"cpu"`` on a
            CPU where the C++ kernels are built, else ``"xla"``), ``"cpu"`` (C++ XLA FFI
            kernels: block and unstructured), ``"xla"`` (XLA gather + batched GEMM, every
            platform, block only) or ``"pallas"`` (the target platform's Pallas kernel: Triton
            on ``cuda``, Mosaic on ``tpu``).
        policy: ``"auto"`` (cost model: a layer goes sparse where its kernel is predicted
            faster, from the measured table in ``compiler/cost_tables``), ``"sparse"``
            (every eligible layer uses its sparse kernel) or ``"dense"`` (channel slicing only).
        calibrate: with ``policy="auto"`` and the CPU kernels, time every candidate layer at
            its shape (dense vs sparse) and decide from that; the report shows both times.
            Dense layers (no mask, or no zeros left after channel slicing) are candidates too:
            the C++ block kernel with every block stored runs a layer where it measured faster
            than XLA's conv (XLA's CPU 1x1 convs are slow), so ``js.sparsify(fn, v, None, x,
            calibrate=True)`` is the dense model on the fastest measured dense kernels.
        platform: the platform the model will run on: ``"cpu"``, ``"cuda"``, ``"tpu"`` or
            ``"rocm"`` (portable lowerings); None: the local default device's. Kernels and the
            cost model follow it, so a model compiled on a CPU machine for ``"cuda"`` lowers
            there with cuSPARSELt 2:4 and the Pallas GPU kernel
            (``jax.jit(sp).trace(...).lower(lowering_platforms=...)``).
        missing_rule: what to do when an activation with removed channels reaches a primitive
            the pass has no rule for (see ``compiler/channels.FLOW``): ``"error"`` (raise
            :class:`~jaxsparse.compiler.interpreter.UnsupportedPrimitiveError` naming it) or
            ``"densify"`` (rebuild the full activation there, exact; the report lists where).
        interpret: run the Pallas kernels in the Pallas interpreter (``backend="pallas"``; any
            platform, for tests), as Pallas ops do.
        fold_batchnorm: fold the per-channel affine ops that follow a conv or dense layer (an
            inference-mode BatchNorm: subtract, multiply, add by host constants) into the
            layer's weights and a per-channel bias, as inference runtimes do; exact to f32
            rounding. Where the layer runs on a C++ CPU kernel, a residual add and a ReLU
            after them go into the kernel's epilogue too (applied before the output is
            stored: no pass over memory of their own). A layer whose raw output is also read
            elsewhere keeps its ops. The report's rows say what was folded.
        micro_batch: run the batch (the leading axis of every input) this many examples at a
            time, so that each layer's activations stay in cache for the next layer (see
            ``compiler/microbatch.py``): an int dividing the batch, None (the whole batch at
            once), or ``"auto"``: on ``cpu`` with ``calibrate=True``, the model is compiled
            both for the whole batch and for the largest divisor of it whose largest layer
            input and output fit in half of L3, and, where the layers' times measured at both
            sizes say so, a third time with only its first layers in chunks (up to the end of
            a residual block; the rest on the whole batch, where chunks would cost the later
            layers their weight reuse); all are timed and the fastest is returned (a split
            pays only where the layers are bound by memory traffic); the whole batch without
            ``calibrate``, on other platforms, or when the batch fits anyway. The pass
            first proves on the jaxpr that every output row depends on that input row alone
            (an inference-mode network); where it cannot, ``"auto"`` keeps the whole batch
            and the report says why. The layers are compiled (and calibrated) at the
            micro-batch's shape; ``report.micro_batch`` says what was chosen and why.

    Returns:
        A :class:`SparseModel` ``sp``; ``sp(sp.variables, *args)`` equals
        ``apply_fn(apply_masks(variables, masks), *args)``.

    Raises:
        ValueError: for a bad backend, policy, platform, missing_rule, masks or micro_batch
            (an int that does not divide the batch, or a function whose rows the pass cannot
            prove independent).
        UnsupportedPrimitiveError: a sliced activation reaches a primitive without a rule
            (``missing_rule="error"``).
    """
    platform = target_platform(platform)
    impl, interpret, note = resolve_backend(backend, platform, interpret)
    if policy not in policy_lib.POLICIES:
        raise ValueError(f"policy={policy!r} is not valid; use one of {policy_lib.POLICIES}.")
    if missing_rule not in MISSING_RULE:
        raise ValueError(f"missing_rule={missing_rule!r} is not valid; use one of "
                         f"{MISSING_RULE}.")
    microbatch.check_request(micro_batch)
    t0 = time.perf_counter()
    mask_of = align_masks(variables, masks)
    flat, treedef = jax.tree_util.tree_flatten_with_path(variables)
    paths = [path_str(p) for p, _ in flat]
    # Masking in numpy: eager jnp ops would compile one XLA program per weight shape.
    leaves = [np.where(mask_of[p], np.asarray(v), np.zeros((), np.asarray(v).dtype))
              if p in mask_of else np.asarray(v) for p, v in zip(paths, (v for _, v in flat),
                                                               strict=True)]
    masked = jax.tree.unflatten(treedef, leaves)
    closed, _, out_shape = engine.trace(apply_fn, masked, *example_args)
    on_gpu = platform == "cuda" and target_platform(None) == "cuda"
    opts = policy_lib.Options(policy, impl, platform, calibrate, note,
                          precompress=on_gpu and cusparselt.available(),
                          missing_rule=missing_rule, interpret=interpret)
    kernels = f"impl {impl!r}{' (Pallas interpreter)' if interpret else ''} on {platform}"
    if note and platform == "cpu":
        kernels += f"; CPU kernels not used: {note}"
    if platform == "cuda":
        kernels += f"; cuSPARSELt 2:4: {cusparselt.status().reason}"
    src = _Source(paths, leaves, mask_of, treedef, jax.tree.structure(out_shape), opts,
                  fold_batchnorm, (backend, policy, kernels, nbytes(variables)), t0)

    def compile_for(mb: microbatch.MicroBatch) -> SparseModel | None:
        if mb.chunks == 1:
            return _rewrite(src, closed, example_args, mb)
        args = microbatch.split_args(example_args, mb)  # The layers are compiled for one chunk.
        small = engine.trace(apply_fn, masked, *args)[0]
        if mb.until is None:
            return _rewrite(src, small, args, mb)
        # The first layers in chunks, the rest on the whole batch: the head traced on a chunk,
        # the tail on the whole batch, cut at the same point of the same equations.
        if mb.until not in engine.cuts(small, len(paths)):
            return None
        return _rewrite(src, engine.split(small, len(paths), mb.until)[0], args, mb,
                        tail=engine.split(closed, len(paths), mb.until)[1])

    mb = split_batch(closed, len(paths), example_args, micro_batch, platform, calibrate)
    if mb.measure:  # "auto" proposes a split: keep it only where it measures faster.
        return _measured_split(mb, compile_for, example_args, t0,
                               lambda: stages.layers_before(closed, len(paths), mb.batch))
    return compile_for(mb)


@dataclasses.dataclass(frozen=True)
class _Source:
    """What :func:`sparsify` prepares once for every rewrite of its function: the masked weight
    leaves (numpy, in ``jax.tree.leaves`` order, with their paths and masks), the trees to
    rebuild, the options, and the report's header (backend, policy, kernels, model bytes)."""

    paths: list[str]
    leaves: list
    mask_of: dict[str, np.ndarray]
    treedef: Any
    out_tree: Any
    opts: policy_lib.Options
    fold_batchnorm: bool
    header: tuple[str, str, str, int]
    t0: float


def _rewrite(src: _Source, closed: Any, example_args: tuple, mb: microbatch.MicroBatch,
             tail: Any = None) -> SparseModel | None:
    """The rewrite of ``closed``, the function traced on ``example_args`` (the whole batch or
    one chunk of ``mb``); with ``tail``, ``closed`` is the head of a cut function
    (:func:`~jaxsparse.compiler.engine.split`) and ``tail`` the rest traced on the whole
    batch, taking the crossing value (only its kept channels, where it is sliced). None when
    a weight is rewritten on both sides of the cut (there is one rewritten copy of it)."""
    head = stages.Stage(closed, mb)
    ctx, notes, carry = _rewrite_stage(src, head, example_args, carry=tail is not None)
    parts = [(ctx, notes, dataclasses.replace(head, carry_out=carry is not None))]
    if tail is not None:
        cross = tail.jaxpr.invars[-1].aval
        arg = carry.shape(cross) if carry else jax.ShapeDtypeStruct(cross.shape, cross.dtype)
        whole = microbatch.MicroBatch(mb.batch, mb.batch, "")
        stage = stages.Stage(tail, whole, ctx.counter, carry)
        tail_ctx, tail_notes, _ = _rewrite_stage(src, stage, (arg,))
        if tail_ctx.rewritten.keys() & ctx.rewritten.keys():
            return None
        parts.append((tail_ctx, tail_notes, stage))
    rewritten = {p: w for c, _, _ in parts for p, w in c.rewritten.items()}
    # One report row per planned layer, in the same order: each says why its ops stayed and
    # how many times a call runs it (the chunks of its stage).
    rows = tuple(dataclasses.replace(r, fold_note=notes.get(key, ""), runs=stage.micro.chunks)
                 for c, notes, stage in parts
                 for key, r in zip(c.plan, c.rows, strict=True))
    new_leaves = [rewritten.get(p, v) for p, v in zip(src.paths, src.leaves, strict=True)]
    folded = {k: v for c, _, _ in parts for k, v in c.folded.items()}
    sp_vars = jax.tree.map(jnp.asarray, {"model": jax.tree.unflatten(src.treedef, new_leaves),
                                         "folded": folded})
    densified: dict[str, int] = {}
    for c, _, _ in parts:
        for name, n in c.densified.items():
            densified[name] = densified.get(name, 0) + n
    backend, policy, kernels, model_bytes = src.header
    report = CompileReport(rows, time.perf_counter() - src.t0, backend, policy, kernels,
                           model_bytes, nbytes(sp_vars), tuple(sorted(densified.items())),
                           sum(c.pools_as_maxima for c, _, _ in parts), mb.batch, mb.size,
                           mb.note)
    plan = {k: v for c, _, _ in parts for k, v in c.plan.items()}
    return SparseModel(sp_vars, report, tuple(stage for _, _, stage in parts), src.out_tree,
                       plan, src.opts)


def _rewrite_stage(src: _Source, stage: stages.Stage, example_args: tuple, carry: bool = False,
                   ) -> tuple[Context, dict[str, str], stages.Carry | None]:
    """One stage's passes, until the folds and every clash are settled: ``(the last pass's
    context, why each layer's ops were not folded, the last pass's sliced output as a
    :class:`~jaxsparse.compiler.stages.Carry` when ``carry`` asks for one and it is
    sliced)``; its layers' keys count from ``stage.counter``."""
    forced: frozenset[str] = frozenset()
    folds: dict[str, tuple] = {}
    notes: dict[str, str] = {}
    analyze = src.fold_batchnorm  # First pass: find the per-channel affines after each layer.
    measured: dict = {}  # calibrate=True: each layer timed once, whatever the pass.
    while True:
        carried: list[stages.Carry] = []  # This pass's.
        ctx = Context(compiling=True, plan={}, options=src.opts, forced_dense=forced,
                      analyze=analyze, folds=folds, measured=measured, counter=stage.counter)
        vals = [WRef(p, v, src.mask_of.get(p)) if np.ndim(v) >= 2 else v
                for p, v in zip(src.paths, src.leaves, strict=True)]

        def trace(*args, ctx=ctx, vals=vals, tell=carried.append if carry else None):
            # Weights stay concrete numpy (closure constants), inputs are traced: the layer
            # rules read weights and channel constants directly.
            return stage.evaluate(ctx, vals, list(args), tell)

        jax.make_jaxpr(trace)(*jax.tree.leaves(example_args))
        clash = (ctx.conflicts | (ctx.materialized & set(ctx.rewritten))) - forced
        if analyze:
            analyze, (folds, notes) = False, affine_folds(ctx.affine_seen, ctx.fold_notes)
            if folds or ctx.unmeasured:  # Again: folded, measured, any clash resolved.
                forced = forced | clash
                continue
        if not clash:
            return ctx, notes, (carried[-1] if carried else None)
        forced = forced | clash


def split_batch(closed: Any, n_weights: int, example_args: tuple, micro_batch: int | str | None,
                platform: str, calibrate: bool = True) -> microbatch.MicroBatch:
    """The micro-batch of a :func:`sparsify` call (see ``compiler/microbatch.choose``):
    ``closed`` is the function traced on the whole batch, its first ``n_weights`` invars the
    weights.

    Raises:
        ValueError: for an int ``micro_batch`` the batch or the function does not allow.
    """
    batch, batch_why = microbatch.batch_of(example_args)
    wanted = micro_batch is not None and (micro_batch != microbatch.AUTO or platform == "cpu")
    why, row_bytes = microbatch.why_not_separable(closed, n_weights, batch) \
        if wanted and batch is not None else (None, 0)
    return microbatch.choose(micro_batch, batch, batch_why, why, row_bytes, platform, calibrate)


def _layer_ms(row: Any) -> float:
    """A layer's measured time on the kernel chosen (0 where it was not measured)."""
    t = row.timing
    if t is None or t.measured_dense_ms is None or t.measured_sparse_ms is None:
        return 0.0
    return min(t.measured_dense_ms, t.measured_sparse_ms)


def _measured_split(mb: microbatch.MicroBatch,
                    compile_for: Callable[[microbatch.MicroBatch], SparseModel | None],
                    example_args: tuple, t0: float,
                    points: Callable[[], tuple[list[int], list[int]]]) -> SparseModel:
    """``micro_batch="auto"`` under ``calibrate=True``: the model compiled for the whole batch
    and for chunks of ``mb.size``; where the layers' times measured in both say that running
    only the first layers in chunks is faster still (:func:`stages.best_cut` over
    ``points()``), that model too; all timed in turn on the example inputs. The fastest, its
    report saying every time."""
    whole = compile_for(microbatch.MicroBatch(mb.batch, mb.batch, "the whole batch"))
    chunked = compile_for(dataclasses.replace(mb, measure=False))
    models = [(whole, "whole"), (chunked, "in chunks")]
    if len(whole.report.rows) == len(chunked.report.rows):
        cuts, layers = points()
        k = stages.best_cut(cuts, layers, [_layer_ms(r) for r in whole.report.rows],
                                [_layer_ms(r) for r in chunked.report.rows], mb.chunks)
        head = None if k is None else compile_for(dataclasses.replace(
            mb, measure=False, until=k, note=f"{mb.note}, for the layers that measured faster "
                                             f"so; the rest on the whole batch"))
        if head is not None:
            models.append((head, "with the first layers in chunks"))
    flat = jax.tree.leaves(example_args)
    # Warmed up longer than a layer: a whole model's first runs after it is compiled are
    # slower (buffers and weights touched anew), by more than the gap measured.
    times = costs.measure([(lambda v, *a, m=m: m(v, *a), (m.variables, *flat))
                           for m, _ in models], reps=11, warmup=4)
    said = "; ".join(f"{t:.1f} ms {label}" for t, (_, label) in zip(times, models,
                                                                     strict=True))
    best = models[int(np.argmin(times))][0]
    r = best.report
    chunked_rows = [row.name for row in r.rows if row.runs > 1]
    through = f" (through {chunked_rows[-1]})" if 0 < len(chunked_rows) < len(r.rows) else ""
    best.report = dataclasses.replace(r, micro_batch_note=f"{r.micro_batch_note}{through}; "
                                                          f"measured {said}",
                                      pass_seconds=time.perf_counter() - t0)
    return best
