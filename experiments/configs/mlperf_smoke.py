"""MLPerf LoadGen on the smoke study, in about two minutes on a 2-core CPU: the study is
trained first when the workdir has none, then dense and both variants run Offline and
SingleStream (performance and accuracy mode), shortened to 2-second minimum durations.

    python -m experiments.mlperf --config=experiments/configs/mlperf_smoke.py \
        --workdir=runs/mlperf_smoke
"""

import ml_collections

from experiments.configs import study_smoke


def get_config():
    c = ml_collections.ConfigDict()
    c.mode = "mlperf"
    c.title = "MLPerf LoadGen, smoke study"
    c.study = study_smoke.get_config()  # The study whose workdir is measured.
    c.run_study = True  # Train the study first when the workdir has none (False: an error).
    c.mlperf = ml_collections.ConfigDict(dict(
        scenarios=("Offline", "SingleStream"),  # Any of Offline, SingleStream, Server.
        modes=("performance", "accuracy"),
        variants="all",  # "all", "best" (dense + the study's best within 99%), or "a,b".
        # "official": LoadGen's resnet50 settings (600 s minimum per test); "short": the
        # same with min_duration_s, labelled "shortened run" everywhere.
        preset="short",
        min_duration_s=2.0,
        batch_size=64,  # Offline batch (SingleStream runs at 1).
        server_batch_size=8,  # Largest batch the Server scenario's queries are gathered to.
        server_load=0.3,  # Server target QPS: this fraction of the measured throughput.
        calibration_s=0.5,  # Pre-measurement per batch size.
        synthetic_samples=1024,  # Speed configs (random weights): samples in the library.
        trace=False))  # LoadGen's trace log (large).
    return c
