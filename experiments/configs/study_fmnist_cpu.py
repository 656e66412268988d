"""The Fashion-MNIST sparsity study sized for a 2-core CPU (about an hour), with accuracy that
means something: dense ResNet-18 (width 0.25) for 11 epochs with augmentation, then each sparse
variant fine-tuned for 1.5 epochs from it, pruned gradually (cubic schedule over the first half
of the fine-tune; 2:4 one-shot as in ASP) and distilled from the dense model.

    python -m experiments.study --config=experiments/configs/study_fmnist_cpu.py \
        --workdir=runs/study_fmnist_cpu

Targets (Fashion-MNIST test set): dense >= 93.0%; 2:4 within 0.3 pt of dense; channel 50%
within 1.0 pt; block 90% within 2.0 pt; unstructured 90% within 1.0 pt. The committed report
(docs/results/study_fmnist_cpu_*) says what was reached.
"""

from experiments.configs import study_fmnist


def get_config():
    c = study_fmnist.get_config()
    c.title = "Fashion-MNIST ResNet-18 (width 0.25) sparsity study, CPU schedule (~1 h, 2 cores)"
    c.base.train.epochs = 4.0
    c.base.train.warmup_epochs = 0.3
    c.base.train.weight_decay = 5e-4
    c.base.train.checkpoint_every_steps = 200
    c.base.data.augment = True
    c.finetune.epochs = 1.5
    c.finetune.lr = 0.04
    c.finetune.warmup_epochs = 0.1
    c.finetune.prune_fraction = 0.5
    c.distill.alpha = 0.5
    c.distill.temperature = 4.0
    c.bench.batch_size = 256
    c.variants = [
        study_fmnist.variant("nm24", "one_shot", "2:4"),
        # Coupled channel pruning: every conv, residual streams included.
        study_fmnist.variant("channel50", "gradual", "channel", 0.5, grouped=True,
                             include=r"conv\w*/kernel$"),
        study_fmnist.variant("block90", "gradual", "block:16x16", 0.9),
        study_fmnist.variant("unstructured90", "gradual", "unstructured", 0.9),
    ]
    return c
