"""Runs one experiment from a config file.

    python -m experiments.run --config=experiments/configs/fmnist_resnet18.py --workdir=runs/r18 \
        [--config.train.epochs=3 ...]

The logic lives in :mod:`jaxsparse.training`; this is only the command line.
"""

import json

import jax
from absl import app, flags

from experiments.cli import define_flags, parse_flags, run_mode
from jaxsparse.training.train import run_bench, train_and_evaluate
from jaxsparse.training.validate import validate_config

FLAGS = flags.FLAGS
define_flags("Experiment", "Folder for checkpoints, TensorBoard events and results.")

MODES = {"train": train_and_evaluate, "bench": run_bench}


def main(argv):
    _, results = run_mode(argv, MODES, check=validate_config)
    if jax.process_index() != 0:  # One report per run: process 0's.
        return
    summary = {k: results[k] for k in ("accuracy", "images_per_sec") if k in results}
    print(json.dumps(summary))
    print(f"Results: {FLAGS.workdir}/results.json  TensorBoard: tensorboard --logdir "
          f"{FLAGS.workdir}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
