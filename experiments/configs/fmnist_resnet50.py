"""ResNet-50 on Fashion-MNIST (small stem): the real experiment, for an accelerator.

    python -m experiments.run --config=experiments/configs/fmnist_resnet50.py --workdir=runs/r50
"""

from experiments.configs import default


def get_config():
    c = default.get_config()
    c.model.name = "resnet50"
    c.train.epochs = 30.0
    c.train.batch_size = 256
    c.train.lr = 0.1
    c.train.warmup_epochs = 2.0
    c.train.label_smoothing = 0.1
    c.train.checkpoint_every_steps = 1000
    c.precision = "bfloat16"
    c.bench.batch_size = 256
    return c


def pruned(pattern: str, sparsity: float = 0.0):
    """This config pruned one-shot (NVIDIA ASP's recipe in one run): dense for the first two
    thirds, magnitude-pruned at ``sparsity.begin_step``, fine-tuned with the mask fixed."""
    c = get_config()
    c.sparsity.method = "one_shot"
    c.sparsity.pattern = pattern
    c.sparsity.sparsity = sparsity
    c.sparsity.begin_step = int(c.train.epochs * 2 / 3) * (60000 // c.train.batch_size)
    return c
