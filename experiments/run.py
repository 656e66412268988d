"""Runs one experiment from a config file.

    python -m experiments.run --config=experiments/configs/fmnist_resnet18.py --workdir=runs/r18 \
        [--config.train.epochs=3 ...]

The logic lives in :mod:`jaxsparse.training`; this is only the command line.
"""

import json

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from experiments.cli import fail, parse_flags
from jaxsparse.data import DatasetError
from jaxsparse.training.train import run_bench, train_and_evaluate
from jaxsparse.training.validate import validate_config

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for checkpoints, TensorBoard events and results.")
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

MODES = {"train": train_and_evaluate, "bench": run_bench}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax and absl are chatty at INFO.
    config = FLAGS.config
    if config.mode not in MODES:
        raise app.UsageError(f"config.mode={config.mode!r} is not valid; use one of "
                             f"{sorted(MODES)}.")
    try:
        validate_config(config, FLAGS.workdir)  # Before any data is read or anything compiled.
        results = MODES[config.mode](config, FLAGS.workdir)
    except (DatasetError, ValueError) as e:
        fail(str(e))
    if jax.process_index() != 0:  # One report per run: process 0's.
        return
    summary = {k: results[k] for k in ("accuracy", "images_per_sec") if k in results}
    print(json.dumps(summary))
    print(f"Results: {FLAGS.workdir}/results.json  TensorBoard: tensorboard --logdir "
          f"{FLAGS.workdir}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
