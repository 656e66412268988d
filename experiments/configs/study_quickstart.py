"""The README's main job: a short version of the Fashion-MNIST sparsity study for a laptop CPU.

    python -m experiments.study --config=experiments/configs/study_quickstart.py \
        --workdir=runs/study_quickstart
"""

from experiments.configs import study_fmnist


def get_config():
    c = study_fmnist.get_config()
    c.title = "Fashion-MNIST ResNet-18 (width 0.25) sparsity study, quickstart schedule"
    c.base.train.epochs = 1.0
    c.base.train.warmup_epochs = 0.1
    c.finetune.epochs = 0.25
    c.note = ("Quickstart schedule: 1 dense epoch and 0.25-epoch fine-tunes, too short for the "
              "sparse rows' accuracy to mean much; run experiments/configs/study_fmnist_cpu.py "
              "for meaningful accuracy.")
    c.bench.num_batches = 10
    c.variants = [v for v in c.variants if v.name != "nm24_srste"]
    return c
