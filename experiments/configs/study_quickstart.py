"""The README's main job: a short Fashion-MNIST sparsity study for a laptop CPU (under 10
minutes on 2 slow cores, once set up).

    python -m experiments.study --config=experiments/configs/study_quickstart.py \
        --workdir=runs/study_quickstart

A quarter-epoch dense model, then two moderate sparsities (unstructured 40% and 50%), each
pruned one-shot by magnitude and fine-tuned for 0.1 epoch with distillation. The accuracies
are a demo's (a 10-minute budget on a CPU that trains at ~90 images/s buys about a third of an
epoch); the CPU study (study_fmnist_cpu.py) trains for real.
"""

from experiments.configs import study_fmnist
from experiments.configs.study_fmnist import variant


def get_config():
    c = study_fmnist.get_config()
    c.title = "Fashion-MNIST ResNet-18 (width 0.25) sparsity study, quickstart schedule"
    c.base.train.epochs = 0.25
    c.base.train.warmup_epochs = 0.05
    c.base.train.log_every_steps = 20
    c.finetune.epochs = 0.1
    c.finetune.lr = 0.04
    c.finetune.warmup_epochs = 0.01
    c.note = ("Quickstart schedule: a 0.25-epoch dense model and 0.1-epoch fine-tunes, far too "
              "short for the accuracies to mean much (the dense model is still far from "
              "trained, and a sparse model that cannot recover within 0.1 epoch misses the "
              "99% bar); run experiments/configs/study_fmnist_cpu.py for the real study.")
    c.bench.num_batches = 10
    c.variants = [
        variant("unstructured40", "one_shot", "unstructured", 0.4),
        variant("unstructured50", "one_shot", "unstructured", 0.5),
    ]
    return c
