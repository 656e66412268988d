"""GPU benchmark: 2:4 (cuSPARSELt) and block-sparse (Pallas Triton) against dense, on an NVIDIA GPU.

    python -m jaxsparse.kernels.gpu.build          # once: the cuSPARSELt FFI library
    python scripts/bench_gpu.py --sections=gemm,e2e --batches=256,1024 --out=docs/results

The sections are :mod:`jaxsparse.study.gpu_figures` (ResNet-50 GEMMs; ResNet-50 224x224 bf16
end to end). Writes, and on a later run updates section by section,
``<out>/<device>-<date>.{json,md}`` with device, driver, jax and cuSPARSELt versions.
"""

import datetime
import json
import os
import re
import sys

import jax
from absl import app, flags

from experiments.cli import fail
from experiments.configs import synthetic_resnet50_224
from jaxsparse.kernels.gpu import cusparselt
from jaxsparse.study import gpu_figures as figs
from jaxsparse.training import experiment

flags.DEFINE_list("sections", "gemm,e2e", "Which sections to run: gemm, e2e.")
flags.DEFINE_list("batches", "256,1024", "End-to-end batch sizes.")
flags.DEFINE_list("variants", list(figs.VARIANTS), f"End-to-end variants: {list(figs.VARIANTS)}.")
flags.DEFINE_integer("gemm_batch", 256, "Images per batch for the GEMM shapes.")
flags.DEFINE_integer("warmup", 3, "Untimed calls after compilation.")
flags.DEFINE_integer("trials", 10, "Timed trials per candidate (alternating).")
flags.DEFINE_integer("reps", 10, "Back-to-back calls per trial.")
flags.DEFINE_string("out", "docs/results", "Folder for the JSON and markdown results.")
flags.DEFINE_string("tag", "", "Suffix of this run's end-to-end sections in the results (keeps "
                    "earlier runs of the same batch size beside it).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    bad = sorted(set(FLAGS.sections) - {"gemm", "e2e"}) + \
        sorted(set(FLAGS.variants) - set(figs.VARIANTS))
    if bad:
        fail(f"unknown sections/variants {bad}; sections: gemm, e2e; variants: "
             f"{list(figs.VARIANTS)}")
    if jax.devices()[0].platform != "gpu":
        fail(f"no GPU (jax.devices() = {jax.devices()}); this benchmark needs one.")
    if not cusparselt.available():
        fail(cusparselt.status().reason)
    env = figs.device_info("bfloat16")
    figs.log(f"{env}")
    date = datetime.date.today().isoformat()
    stem = re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-") + f"-{date}"
    os.makedirs(FLAGS.out, exist_ok=True)
    path = os.path.join(FLAGS.out, stem + ".json")
    res = json.load(open(path)) if os.path.exists(path) else {}
    res.update({"environment": env, "date": date})
    command = " ".join(["python", *sys.argv])
    timing = dict(warmup=FLAGS.warmup, trials=FLAGS.trials, reps=FLAGS.reps)

    def save():
        with open(path, "w") as f:
            json.dump(res, f, indent=2)
        with open(os.path.join(FLAGS.out, stem + ".md"), "w") as f:
            f.write(figs.markdown(res) + "\n")
        figs.log(f"wrote {path} and .md")

    if "gemm" in FLAGS.sections:
        res["gemm"] = {"batch": FLAGS.gemm_batch, "command": command,
                       "rows": figs.gemm_rows(FLAGS.gemm_batch, **timing)}
        save()
    if "e2e" in FLAGS.sections:
        config = synthetic_resnet50_224.get_config()
        config.precision = "bfloat16"
        exp = experiment.build(config, load_data=False)
        for batch in map(int, FLAGS.batches):
            key = f"e2e_b{batch}" + (f"_{FLAGS.tag}" if FLAGS.tag else "")
            res[key] = {"batch": batch, "command": command, "tag": FLAGS.tag,
                        "rows": figs.e2e_rows(exp, batch, FLAGS.variants, **timing)}
            save()
    print(figs.markdown(res))


if __name__ == "__main__":
    app.run(main)
