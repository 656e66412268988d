"""A study in under two minutes on a 2-core CPU: tiny model, dense + two sparse variants.

    python -m experiments.study --config=experiments/configs/study_smoke.py \
        --workdir=runs/study_smoke
"""

from experiments.configs import smoke, study_fmnist


def get_config():
    c = study_fmnist.get_config()
    c.title = "smoke study"
    c.base = smoke.get_config()
    c.base.progress = False
    c.base.train.log_every_steps = 1  # Per-step TensorBoard scalars (the tests read them).
    c.base.sparsity.frequency = 2  # Gradual variants update their masks every 2 steps.
    c.finetune.epochs = 0.5
    c.bench.batch_size = 64
    c.bench.warmup = 1
    c.bench.num_batches = 3
    c.variants = [
        study_fmnist.variant("channel50", "one_shot", "channel", 0.5, grouped=True,
                             include=r"conv\w*/kernel$"),
        study_fmnist.variant("block75", "gradual", "block:8x8", 0.75, policy="sparse"),
    ]
    c.sweep.pattern = "block:8x8"
    return c
