"""Measures a study's models with MLPerf LoadGen: scenarios, VALID/INVALID, accuracy log.

    python -m experiments.mlperf --config=experiments/configs/mlperf_smoke.py \
        --workdir=runs/mlperf_smoke

``--workdir`` is the study's folder (dense and variants trained there); LoadGen's logs and the
report go to ``<workdir>/mlperf/``. The logic lives in :mod:`jaxsparse.study.mlperf`; this is
only the command line.
"""

import os
import sys

import jax
from absl import app, flags

from experiments.cli import define_flags, fail, parse_flags, run_mode
from jaxsparse.study import mlperf_report
from jaxsparse.study.loadgen import SUTError
from jaxsparse.study.mlperf import check_config, run_mlperf

FLAGS = flags.FLAGS
define_flags("MLPerf", "The study's folder; LoadGen's logs and the report go to <workdir>/mlperf.")


def _run(config, workdir):
    try:
        return run_mlperf(config, workdir)
    except SUTError as e:
        fail(str(e))


def main(argv):
    _, rep = run_mode(argv, {"mlperf": _run}, check=check_config)
    if jax.process_index() != 0:
        return
    for r in rep["rows"]:
        print(mlperf_report.row_text(r))
    print("\n".join(rep["summary"]))
    out = os.path.join(FLAGS.workdir, "mlperf")
    print(f"Report: {out}/report.md  LoadGen logs: {out}/<variant>/<scenario>-<mode>/\n"
          f"TensorBoard: tensorboard --logdir {out}", file=sys.stdout)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
