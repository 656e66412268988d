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
from jaxsparse.compiler import costs, engine, layers, microbatch  # noqa: F401
from jaxsparse.compiler import policy as policy_lib
from jaxsparse.compiler.interpreter import MISSING_RULE, Context, eval_jaxpr
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
    micro-batched model runs that batch in chunks (``report.micro_batch`` examples each).

    Attributes:
        variables: ``{"model": the variables with packed/sliced weights, "folded": constant
            bias maps of removed channels}``; a pytree orbax can checkpoint.
        report: a :class:`CompileReport`, one row per conv/dot layer.
    """

    variables: dict
    report: CompileReport
    _jaxpr: Any
    _out_tree: Any
    _plan: dict
    _options: policy_lib.Options
    _micro: microbatch.MicroBatch

    def __call__(self, variables: dict, *args: Any) -> Any:
        leaves = jax.tree_util.tree_flatten_with_path(variables["model"],
                                                      is_leaf=is_rewritten)[0]
        vals = [WRef(path_str(p), v, None) if is_rewritten(v) or np.ndim(v) >= 2 else v
                for p, v in leaves]
        flat_args = jax.tree.leaves(args)
        mb = self._micro
        expected = [((mb.batch, *v.aval.shape[1:]) if mb.chunks > 1 else v.aval.shape,
                     v.aval.dtype) for v in self._jaxpr.jaxpr.invars[len(leaves):]]
        got = [(tuple(np.shape(a)), jnp.result_type(a)) for a in flat_args]
        if got != expected:
            raise ValueError(f"this SparseModel was compiled for inputs {expected} (shape, dtype) "
                             f"but got {got}; call js.sparsify again with example inputs of the "
                             f"new shape (jax.vmap over extra leading axes works).")

        def run(*chunk):  # One micro-batch (or the whole batch).
            ctx = Context(compiling=False, plan=self._plan,
                          folded=variables.get("folded", {}), options=self._options)
            outs = eval_jaxpr(ctx, self._jaxpr.jaxpr, list(self._jaxpr.consts),
                              vals + list(chunk))
            return [ctx.plain(o) for o in outs]

        outs = microbatch.run_in_chunks(run, flat_args, mb)
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
            input and output fit in half of L3, both are timed, and the faster is returned (a
            split pays only where the layers are bound by memory traffic); the whole batch
            without ``calibrate``, on other platforms, or when the batch fits anyway. The pass
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

    def compile_for(mb: microbatch.MicroBatch) -> SparseModel:
        if mb.chunks == 1:
            return _rewrite(src, closed, example_args, mb)
        args = microbatch.split_args(example_args, mb)  # The layers are compiled for one chunk.
        return _rewrite(src, engine.trace(apply_fn, masked, *args)[0], args, mb)

    mb = split_batch(closed, len(paths), example_args, micro_batch, platform, calibrate)
    if mb.measure:  # "auto" proposes a split: keep it only where it measures faster.
        return _measured_split(mb, compile_for, example_args, t0)
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


def _rewrite(src: _Source, closed: Any, example_args: tuple,
             mb: microbatch.MicroBatch) -> SparseModel:
    """The rewrite of ``closed`` (the function traced on ``example_args``: the whole batch,
    or one chunk of ``mb``): passes until the folds and every clash are settled."""
    forced: frozenset[str] = frozenset()
    folds: dict[str, tuple] = {}
    notes: dict[str, str] = {}
    analyze = src.fold_batchnorm  # First pass: find the per-channel affines after each layer.
    measured: dict = {}  # calibrate=True: each layer timed once, whatever the pass.
    while True:
        ctx = Context(compiling=True, plan={}, options=src.opts, forced_dense=forced,
                      analyze=analyze, folds=folds, measured=measured)
        vals = [WRef(p, v, src.mask_of.get(p)) if np.ndim(v) >= 2 else v
                for p, v in zip(src.paths, src.leaves, strict=True)]

        def trace(*args, ctx=ctx, vals=vals):
            # Weights stay concrete numpy (closure constants), inputs are traced: the layer
            # rules read weights and channel constants directly.
            return [ctx.plain(o) for o in eval_jaxpr(ctx, closed.jaxpr, list(closed.consts),
                                                     vals + list(args))]

        jax.make_jaxpr(trace)(*jax.tree.leaves(example_args))
        clash = (ctx.conflicts | (ctx.materialized & set(ctx.rewritten))) - forced
        if analyze:
            analyze, (folds, notes) = False, affine_folds(ctx.affine_seen, ctx.fold_notes)
            if folds or ctx.unmeasured:  # Again: folded, measured, any clash resolved.
                forced = forced | clash
                continue
        if not clash:
            break
        forced = forced | clash
    # One report row per planned layer, in the same order: each says why its ops stayed.
    rows = tuple(dataclasses.replace(r, fold_note=notes.get(key, ""))
                 for key, r in zip(ctx.plan, ctx.rows, strict=True))
    new_leaves = [ctx.rewritten.get(p, v) for p, v in zip(src.paths, src.leaves, strict=True)]
    sp_vars = jax.tree.map(jnp.asarray, {"model": jax.tree.unflatten(src.treedef, new_leaves),
                                         "folded": dict(ctx.folded)})
    backend, policy, kernels, model_bytes = src.header
    report = CompileReport(rows, time.perf_counter() - src.t0, backend, policy, kernels,
                           model_bytes, nbytes(sp_vars),
                           tuple(sorted(ctx.densified.items())), ctx.pools_as_maxima,
                           mb.batch, mb.size, mb.note)
    return SparseModel(sp_vars, report, closed, src.out_tree, ctx.plan, src.opts, mb)


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


def _measured_split(mb: microbatch.MicroBatch,
                    compile_for: Callable[[microbatch.MicroBatch], SparseModel],
                    example_args: tuple, t0: float) -> SparseModel:
    """``micro_batch="auto"`` under ``calibrate=True``: the model compiled for the whole batch
    and for chunks of ``mb.size``, timed in turn on the example inputs; the faster one, its
    report saying both times."""
    whole = compile_for(microbatch.MicroBatch(mb.batch, mb.batch, ""))
    split = compile_for(dataclasses.replace(mb, measure=False))
    flat = jax.tree.leaves(example_args)
    # Warmed up longer than a layer: a whole model's first runs after it is compiled are
    # slower (buffers and weights touched anew), by more than the gap measured.
    t_whole, t_split = costs.measure([(lambda v, *a, m=m: m(v, *a), (m.variables, *flat))
                                      for m in (whole, split)], reps=7, warmup=3)
    times = f"measured {t_split:.1f} ms in chunks against {t_whole:.1f} ms whole"
    if t_split < t_whole:
        best, note = split, f"{mb.note}; {times}"
    else:
        best, note = whole, f"the whole batch: {times} (chunks of {mb.size} would keep the " \
                            f"largest layer's activations in L3)"
    best.report = dataclasses.replace(best.report, micro_batch_note=note,
                                      pass_seconds=time.perf_counter() - t0)
    return best
