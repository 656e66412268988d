"""ResNet-18 (width 0.25) on Fashion-MNIST: fits a laptop CPU in minutes.

    python -m experiments.run --config=experiments/configs/fmnist_resnet18.py \
        --workdir=runs/fmnist_resnet18
"""

from experiments.configs import default


def get_config():
    c = default.get_config()
    c.model.name = "resnet18"
    c.model.width = 0.25
    c.train.epochs = 2.0
    c.train.batch_size = 128
    c.train.warmup_epochs = 0.2
    c.train.checkpoint_every_steps = 100
    return c
