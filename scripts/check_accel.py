"""Compiles (not only lowers) the sparse ResNet50 for an H100 and TPU v5e/v6e, with no accelerator.

    python scripts/check_accel.py --targets=h100,v5e,v6e --variants=nm24,block90 [--batch=256]

Run by ``scripts/check_accel.sh`` (its own venv with the CUDA plugin and libtpu); the logic is
:mod:`jaxsparse.study.accel_check`. Prints each compile's time and custom calls; exits 1 when
any compile fails or a target's sparse kernel is missing from its program.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A TPU compile-only client on a machine without TPUs needs these before jax starts.
TPU_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"}


def parse(argv: list[str], targets: list[str], variants: list[str],
          ) -> dict[str, list[str] | int]:
    args: dict[str, list[str] | int] = {"targets": targets, "variants": variants, "batch": 256}
    for a in argv:
        key, _, value = a.lstrip("-").partition("=")
        if key not in args:
            sys.exit(f"error: unknown flag --{key}; flags: --targets, --variants, --batch")
        args[key] = int(value) if key == "batch" else value.split(",")
    bad = [t for t in args["targets"] if t not in targets] + \
        [v for v in args["variants"] if v not in variants]
    if bad:
        sys.exit(f"error: unknown targets/variants {bad}; targets: {targets}, variants: "
                 f"{variants}")
    return args


def main(argv: list[str]) -> int:
    for k, v in TPU_ENV.items():  # Before jax starts.
        os.environ.setdefault(k, v)
    import jax

    from experiments.configs import synthetic_resnet50_224
    from jaxsparse.kernels.gpu import cusparselt
    from jaxsparse.study import accel_check

    args = parse(argv, list(accel_check.TARGETS), list(accel_check.VARIANTS))
    print(f"jax {jax.__version__}; cuSPARSELt FFI library: {cusparselt.status().reason}",
          flush=True)
    config = synthetic_resnet50_224.get_config()  # ResNet-50 at 224x224,
    config.precision = "bfloat16"  # in bf16, as on the accelerators.
    failures = accel_check.check(config, args["targets"], args["variants"], args["batch"],
                                 log=lambda line: print(line, flush=True))
    if failures:
        print(f"{len(failures)} failure(s):\n  " + "\n  ".join(failures), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
