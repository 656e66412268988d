"""The quickstart's last step: MLPerf LoadGen's Offline scenario (shortened to 3 s) for the
dense model and the quickstart study's best model within 99% of the dense accuracy, in
performance and accuracy mode.

    python -m experiments.mlperf --config=experiments/configs/mlperf_quickstart.py \
        --workdir=runs/study_quickstart
"""

from experiments.configs import mlperf_smoke, study_quickstart


def get_config():
    c = mlperf_smoke.get_config()
    c.title = "MLPerf LoadGen, quickstart study"
    c.study = study_quickstart.get_config()
    c.run_study = False  # scripts/quickstart.sh runs the study first.
    c.mlperf.scenarios = ("Offline",)
    c.mlperf.variants = "best"
    c.mlperf.min_duration_s = 3.0
    c.mlperf.batch_size = 256
    return c
