"""Runs one experiment from a config file.

    python -m experiments.run --config=experiments/configs/fmnist_resnet18.py --workdir=runs/r18 \
        [--config.train.epochs=3 ...]

The logic lives in :mod:`jaxsparse.training`; this is only the command line.
"""

import json

import jax
from absl import app, flags
from ml_collections import config_flags

from experiments.cli import parse_flags, run_mode
from jaxsparse.training.train import run_bench, train_and_evaluate
from jaxsparse.training.validate import validate_config

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for checkpoints, TensorBoard events and results.")
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

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
