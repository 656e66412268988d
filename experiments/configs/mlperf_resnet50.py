"""MLPerf LoadGen with the official ResNet-50 settings (600 s minimum per test) on random
ResNet-50 weights at 224x224 and synthetic samples: performance only (random weights have no
accuracy), dense and the speed study's default variants, Offline and SingleStream.

    python -m experiments.mlperf --config=experiments/configs/mlperf_resnet50.py \
        --workdir=runs/mlperf_resnet50

About an hour per model on a 2-core CPU; ``--config.mlperf.preset=short`` for a demo.
"""

from experiments.configs import mlperf_smoke, speed_resnet50


def get_config():
    c = mlperf_smoke.get_config()
    c.title = "MLPerf LoadGen, ResNet-50 224x224 (random weights)"
    c.study = speed_resnet50.get_config()
    c.run_study = False  # Random weights: nothing to train.
    c.mlperf.preset = "official"
    c.mlperf.min_duration_s = 10.0  # Used only with preset="short".
    c.mlperf.batch_size = 16
    c.mlperf.server_batch_size = 4
    return c
