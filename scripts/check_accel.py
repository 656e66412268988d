"""Compiles (not only lowers) the sparse ResNet50 for an H100 and TPU v5e/v6e, with no accelerator.

    python scripts/check_accel.py --targets=h100,v5e,v6e --variants=nm24,block90

Run by ``scripts/check_accel.sh`` (its own venv with the CUDA plugin and libtpu). For each
variant (ResNet50 224x224 bf16, batch ``--batch``, pruned 2:4 or block 90%) and target:
``js.sparsify(..., platform=<cuda|tpu>)`` on this CPU machine, then ``jax.jit(sp).trace(...)
.lower().compile()`` against a compile-only device of that target
(``jax.experimental.topologies``: an H100 from its target config, TPUs from their topology
names), printing the compile time and the custom calls the program holds. Exits 1 when any
compile fails or a target's sparse kernel is missing from its program.
"""

from __future__ import annotations

import functools
import os
import sys
import time

TPU_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"}
TARGETS = {  # name -> (platform, topology, TPU_ACCELERATOR_TYPE)
    "h100": ("cuda", "1x1x1", None),
    "v5e": ("tpu", "v5e:2x2", "v5litepod-4"),
    "v6e": ("tpu", "v6e:2x2", "v6e-4"),
}
# variant -> (pattern, sparsity, block size per platform)
VARIANTS = {"nm24": ("2:4", None), "block90": ("block", 0.9)}
# The custom call each (variant, platform) must contain: the target's sparse kernel.
EXPECTED = {("nm24", "cuda"): "jaxsparse_cusparselt_matmul",
            ("block90", "cuda"): "__gpu$xla.gpu.triton",
            ("block90", "tpu"): "tpu_custom_call"}
HERE = os.path.dirname(os.path.abspath(__file__))
H100_CONFIG = os.path.join(HERE, "targets", "h100_sxm_target_config.txtpb")


def parse(argv: list[str]) -> dict[str, list[str] | int]:
    args = {"targets": list(TARGETS), "variants": list(VARIANTS), "batch": 256}
    for a in argv:
        key, _, value = a.lstrip("-").partition("=")
        if key not in args:
            sys.exit(f"error: unknown flag --{key}; flags: --targets, --variants, --batch")
        args[key] = int(value) if key == "batch" else value.split(",")
    bad = [t for t in args["targets"] if t not in TARGETS] + \
        [v for v in args["variants"] if v not in VARIANTS]
    if bad:
        sys.exit(f"error: unknown targets/variants {bad}; targets: {list(TARGETS)}, variants: "
                 f"{list(VARIANTS)}")
    return args


def devices_for(target: str):
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


def abstract(a, sharding):
    """The shape, dtype and sharding of ``a``, for lowering without data."""
    import jax
    import numpy as np

    return jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=sharding)


def main(argv: list[str]) -> int:
    args = parse(argv)
    for k, v in TPU_ENV.items():
        os.environ.setdefault(k, v)
    import warnings

    import jax
    import numpy as np

    import jaxsparse as js
    from experiments.configs import synthetic_resnet50_224
    from jaxsparse.gpu import cusparselt
    from jaxsparse.gpu.aot import custom_calls
    from jaxsparse.training import experiment

    print(f"jax {jax.__version__}; cuSPARSELt FFI library: {cusparselt.status().reason}",
          flush=True)
    # The stem (3 input channels) and layers a block does not tile stay dense: expected here.
    warnings.filterwarnings("ignore", category=js.SkippedLayerWarning)
    config = synthetic_resnet50_224.get_config()
    config.precision = "bfloat16"
    exp = experiment.build(config, load_data=False)
    apply_fn, variables, example = exp.apply_fn, exp.variables, exp.example(args["batch"])
    failures = []
    for target in args["targets"]:
        platform = TARGETS[target][0]
        try:
            devs = devices_for(target)
        except Exception as e:  # noqa: BLE001 - report and go on to the next target.
            failures.append(f"{target}: no compile-only device ({e})")
            print(f"FAIL {target}: no compile-only device: {e}", flush=True)
            continue
        mesh = jax.sharding.Mesh(np.asarray(devs), ("d",))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        for variant in args["variants"]:
            pattern, sparsity = VARIANTS[variant]
            if pattern == "block":  # The largest block each target's Pallas kernel runs.
                pattern = "block:128x128" if platform == "tpu" else "block:64x64"
            masks = js.prune(variables["params"], pattern, sparsity)
            t0 = time.perf_counter()
            sp = js.sparsify(apply_fn, variables, masks, example, policy="sparse",
                            platform=platform)
            pass_s = time.perf_counter() - t0
            spec = functools.partial(abstract, sharding=replicated)
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
                failures.append(f"{target} {variant}: {type(e).__name__}: {e}"[:2000])
                print(f"FAIL {target} {variant} ({pattern}): {type(e).__name__}: "
                      f"{str(e)[:1500]}", flush=True)
                continue
            want = EXPECTED.get((variant, platform))
            sparse_layers = sum(r.sparse for r in sp.report.rows)
            status = "ok"
            if want and want not in calls:
                status = f"FAIL: {want} missing"
                failures.append(f"{target} {variant}: {want} missing from {calls}")
            print(f"{status} {target} ({devs[0].device_kind}) {variant} ({pattern}), batch "
                  f"{args['batch']}: pass {pass_s:.1f} s, lower {lower_s:.1f} s, compile "
                  f"{compile_s:.1f} s; {sparse_layers} sparse layers; custom calls {calls}",
                  flush=True)
    if failures:
        print(f"{len(failures)} failure(s):\n  " + "\n  ".join(failures), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
