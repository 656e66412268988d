"""GPU benchmark: 2:4 (cuSPARSELt) and block-sparse (Pallas Triton) against dense, on an NVIDIA GPU.

    python -m jaxsparse.kernels.gpu.build          # once: the cuSPARSELt FFI library
    python scripts/bench_gpu.py --sections=gemm,e2e --batches=256,1024 --out=docs/results \
        --cost_table=jaxsparse/compiler/cost_tables/cuda.json

The sections are :mod:`jaxsparse.study.gpu_figures` (ResNet-50 GEMMs; ResNet-50 224x224 bf16
end to end). Writes, and on a later run updates section by section,
``<out>/<device>-<date>.{json,md}`` with device, driver, jax and cuSPARSELt versions, and
with ``--cost_table`` the ``cuda`` cost table from the GEMM sweep (the fastest cuSPARSELt plan
per shape), which ``policy="auto"`` reads on ``cuda``.
"""

import datetime
import json
import os
import re
import sys
import time

import jax
from absl import app, flags

from experiments.cli import fail
from experiments.configs import synthetic_resnet50_224
from jaxsparse.compiler import costs
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
flags.DEFINE_string("cost_table", "", "Also write the cuda cost table that policy='auto' reads "
                    "(jaxsparse/compiler/cost_tables/cuda.json) from the GEMM section, here.")
flags.DEFINE_integer("budget_s", 0, "Seconds this run may take (0: no limit): an end-to-end "
                     "batch size predicted not to finish in what is left is skipped, and the "
                     "results say so.")
flags.DEFINE_string("study_report", "docs/results/study_fmnist_cpu_report.json",
                    "A training study's report: its accuracy for each variant's pattern goes "
                    "beside the end-to-end rows ('' for none).")
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
    study = None
    if FLAGS.study_report:
        if not os.path.isfile(FLAGS.study_report):
            fail(f"--study_report {FLAGS.study_report!r} does not exist ('' for none).")
        with open(FLAGS.study_report) as f:
            study = json.load(f)
    env = figs.device_info("bfloat16")
    figs.log(f"{env}")
    note = cusparselt.version_note(env["cusparselt"])
    if note:
        figs.log(f"WARNING: {note}")
    date = datetime.date.today().isoformat()
    stem = re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-") + f"-{date}"
    os.makedirs(FLAGS.out, exist_ok=True)
    path = os.path.join(FLAGS.out, stem + ".json")
    res = json.load(open(path)) if os.path.exists(path) else {}
    res.update({"environment": env, "date": date})
    start = time.monotonic()
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
        if FLAGS.cost_table:
            try:
                data = figs.cost_table(res)
            except ValueError as e:
                fail(str(e))
            with open(FLAGS.cost_table, "w") as f:
                json.dump(data, f, indent=2)
            costs.load_table.cache_clear()  # The end-to-end section compiles with it.
            figs.log(f"wrote the cuda cost table {FLAGS.cost_table} ({len(data['gemms'])} "
                     f"GEMM shapes)")
    if "e2e" in FLAGS.sections:
        config = synthetic_resnet50_224.get_config()
        config.precision = "bfloat16"
        exp = experiment.build(config, load_data=False)
        last = None  # (batch, seconds) of the batch size run before.
        for batch in map(int, FLAGS.batches):
            key = f"e2e_b{batch}" + (f"_{FLAGS.tag}" if FLAGS.tag else "")
            left = FLAGS.budget_s - (time.monotonic() - start) if FLAGS.budget_s else None
            need = figs.predicted_seconds(last, batch)
            if left is not None and need is not None and need > left:
                why = (f"skipped: predicted {need:.0f} s (from batch {last[0]}'s "
                       f"{last[1]:.0f} s) with {left:.0f} s of the {FLAGS.budget_s} s budget "
                       f"left")
                figs.log(f"e2e batch {batch} {why}")
                res[key] = {"batch": batch, "command": command, "tag": FLAGS.tag,
                            "skipped": why}
                save()
                continue
            t = time.monotonic()
            rows = figs.e2e_rows(exp, batch, FLAGS.variants, **timing)
            for row in rows:
                row["study"] = figs.study_accuracy(study, row["variant"]) if study else None
            res[key] = {"batch": batch, "command": command, "tag": FLAGS.tag, "rows": rows}
            last = (batch, time.monotonic() - t)
            save()
    print(figs.markdown(res))


if __name__ == "__main__":
    app.run(main)
