"""Runs a sparsity study from a config file: dense and sparse, speed beside accuracy.

    python -m experiments.study --config=experiments/configs/study_fmnist.py \
        --workdir=runs/study_fmnist
    python -m experiments.study --config=experiments/configs/speed_resnet50.py \
        --workdir=runs/speed_resnet50

``config.mode`` picks the study: ``"train"`` (:func:`jaxsparse.study.run_study`) or
``"speed"`` (:func:`jaxsparse.study.run_speed`: random weights, no training). The logic lives
in :mod:`jaxsparse.study`; this is only the command line.
"""

import jax
from absl import app, flags

from experiments.cli import define_flags, parse_flags, run_mode
from jaxsparse.study import run_speed, run_study

FLAGS = flags.FLAGS
define_flags("Study", "Folder of the study (one subfolder per variant).")

MODES = {"train": run_study, "speed": run_speed}


def main(argv):
    mode, _ = run_mode(argv, MODES)
    if jax.process_index() != 0:  # One report per study: process 0's.
        return
    with open(f"{FLAGS.workdir}/report.md") as f:
        print(f.read())
    plot = f"  Plot: {FLAGS.workdir}/pareto.png" if mode == "train" else ""
    print(f"Report: {FLAGS.workdir}/report.md{plot}\n"
          f"TensorBoard: tensorboard --logdir {FLAGS.workdir}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
