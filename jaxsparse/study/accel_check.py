"""Compiles (not only lowers) the sparse ResNet-50 for an H100 and TPU v5e/v6e, no accelerator.

For each variant (ResNet-50 224x224 bf16, random weights pruned 2:4, block 90%, and for the
H100 also the rest of the GPU figures' end-to-end variants: block 90% 128x128, channel 50%,
channel 50% + 2:4, and the Mosaic GPU block kernel alone) and target:
``js.sparsify(..., platform=<cuda|tpu>)`` on this CPU machine, then ``jax.jit(sp).trace(...)
.lower().compile()`` against a compile-only device of that target
(``jax.experimental.topologies``: an H100 from its target config, TPUs from their topology
names). ``scripts/check_accel.py`` runs it (``scripts/check_accel.sh`` in CI); the process
sets the TPU compile-only client's environment before jax starts.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

import jaxsparse as js
from jaxsparse.compiler.aot import custom_calls
from jaxsparse.study.variants import Variant
from jaxsparse.training import experiment

TARGETS = {  # name -> (platform, topology, TPU_ACCELERATOR_TYPE)
    "h100": ("cuda", "1x1x1", None),
    "v5e": ("tpu", "v5e:2x2", "v5litepod-4"),
    "v6e": ("tpu", "v6e:2x2", "v6e-4"),
}
VARIANTS = {v.name: v for v in [
    Variant("nm24", "2:4", policy="sparse"),
    Variant("block90", "block:64x64", 0.9, policy="sparse"),
    # The rest of the GPU figures' end-to-end variants (scripts/gpu_check.sh), for cuda only.
    Variant("block90_128", "block:128x128", 0.9, policy="sparse"),
    Variant("channel50", "channel", 0.5, grouped=True, policy="sparse"),
    Variant("channel50_nm24", "channel", 0.5, grouped=True, nm_after=True, policy="sparse"),
]}
ONLY_ON = {"block90_128": "cuda", "channel50": "cuda", "channel50_nm24": "cuda"}
# The largest block each platform's Pallas kernel runs, for the variant "block90".
BLOCK_ON = {"tpu": "block:128x128", "cuda": "block:64x64"}
# The custom call each (variant, platform) must contain: the target's sparse kernel.
EXPECTED = {("nm24", "cuda"): "jaxsparse_cusparselt_matmul",
            ("block90", "cuda"): "__gpu$xla.gpu.triton",
            ("block90_128", "cuda"): "__gpu$xla.gpu.triton",
            ("channel50_nm24", "cuda"): "jaxsparse_cusparselt_matmul",
            ("block90", "tpu"): "tpu_custom_call"}
H100_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "scripts", "targets", "h100_sxm_target_config.txtpb")


def devices_for(target: str) -> list[Any]:
    """One compile-only device of ``target``."""
    from jax.experimental import topologies

    platform, topology, accel = TARGETS[target]
    if platform == "cuda":
        with open(H100_CONFIG) as f:
            topo = topologies.get_topology_desc(platform="cuda", target_config=f.read(),
                                                topology=topology)
    else:
        os.environ["TPU_ACCELERATOR_TYPE"] = accel
        topo = topologies.get_topology_desc(topology_name=topology, platform="tpu")
    return topo.devices[:1]


def _abstract(a: Any, sharding: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=sharding)


def for_platform(v: Variant, platform: str) -> Variant:
    """``v`` with the block size ``platform``'s Pallas kernel runs (variant "block90")."""
    if v.name == "block90" and platform in BLOCK_ON:
        return dataclasses.replace(v, pattern=BLOCK_ON[platform])
    return v


def check(config: ml_collections.ConfigDict, targets: list[str], variants: list[str],
          batch: int, log: Callable[[str], None] = print) -> list[str]:
    """Compiles every variant of ``config``'s model (random weights) for every target;
    returns the failures (empty: all passed)."""
    # The stem (3 input channels) and layers a block does not tile stay dense: expected here.
    warnings.filterwarnings("ignore", category=js.SkippedLayerWarning)
    exp = experiment.build(config, load_data=False)
    example = exp.example(batch)
    failures = []
    for target in targets:
        platform = TARGETS[target][0]
        try:
            devs = devices_for(target)
        except Exception as e:  # noqa: BLE001 - report and go on to the next target.
            failures.append(f"{target}: no compile-only device ({e})")
            log(f"FAIL {target}: no compile-only device: {e}")
            continue
        mesh = jax.sharding.Mesh(np.asarray(devs), ("d",))
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        spec = functools.partial(_abstract, sharding=sharding)
        for name in variants:
            if ONLY_ON.get(name, platform) != platform:
                log(f"skip {target} {name}: a GPU figures variant, compiled for "
                    f"{ONLY_ON[name]} only")
                continue
            v = for_platform(VARIANTS[name], platform)
            masks = v.masks(exp.apply_fn, exp.variables, example)
            t0 = time.perf_counter()
            sp = js.sparsify(exp.apply_fn, exp.variables, masks, example, policy=v.policy,
                             platform=platform)
            pass_s = time.perf_counter() - t0
            try:
                t0 = time.perf_counter()
                lowered = jax.jit(sp).trace(jax.tree.map(spec, sp.variables),
                                            spec(example)).lower()
                calls = sorted(custom_calls(lowered.as_text()))
                lower_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                lowered.compile()
                compile_s = time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001 - every failure is reported at the end.
                failures.append(f"{target} {name}: {type(e).__name__}: {e}"[:2000])
                log(f"FAIL {target} {name} ({v.pattern}): {type(e).__name__}: {str(e)[:1500]}")
                continue
            want = EXPECTED.get((name, platform))
            status = "ok"
            if want and want not in calls:
                status = f"FAIL: {want} missing"
                failures.append(f"{target} {name}: {want} missing from {calls}")
            log(f"{status} {target} ({devs[0].device_kind}) {name} ({v.pattern}), batch "
                f"{batch}: pass {pass_s:.1f} s, lower {lower_s:.1f} s, compile "
                f"{compile_s:.1f} s; {sum(r.sparse for r in sp.report.rows)} sparse layers; "
                f"custom calls {calls}")
        if platform == "cuda":
            failures += _mosaic_gpu_kernel(target, sharding, batch, log)
    return failures


def _mosaic_gpu_kernel(target: str, sharding: Any, batch: int,
                       log: Callable[[str], None]) -> list[str]:
    """Compiles the Mosaic GPU block-sparse kernel alone on ResNet-50's layer3 3x3 GEMM
    (im2col, ``batch`` images) for 64x64 and 128x128 blocks at 90% sparsity: no model takes it
    until a GPU run measures it faster than Triton (the cuda cost table)."""
    from jaxsparse.kernels.gpu.block_sparse_mosaic import block_sparse_matmul_mosaic

    failures = []
    m, k, n = batch * 14 * 14, 9 * 256, 256
    for b in (64, 128):
        maxk = max(1, round(0.1 * k / b))
        args = [jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for shape, dtype in (
            ((m, k), jax.numpy.bfloat16), ((n // b, maxk, b, b), jax.numpy.bfloat16),
            ((n // b, maxk), jax.numpy.int32))]
        try:
            t0 = time.perf_counter()
            lowered = jax.jit(block_sparse_matmul_mosaic).trace(*args).lower()
            calls = sorted(custom_calls(lowered.as_text()))
            lowered.compile()
        except Exception as e:  # noqa: BLE001 - every failure is reported at the end.
            failures.append(f"{target} mosaic_gpu {b}x{b}: {type(e).__name__}: {e}"[:2000])
            log(f"FAIL {target} Mosaic GPU block kernel {b}x{b}: {str(e)[:1500]}")
            continue
        ok = any(c.startswith("mosaic_gpu") for c in calls)
        if not ok:
            failures.append(f"{target} mosaic_gpu {b}x{b}: no mosaic_gpu call in {calls}")
        log(f"{'ok' if ok else 'FAIL'} {target} Mosaic GPU block kernel {b}x{b} on layer3 3x3 "
            f"(M={m}, K={k}, N={n}, {maxk} blocks per column): lowered and compiled in "
            f"{time.perf_counter() - t0:.1f} s; custom calls {calls}")
    return failures
