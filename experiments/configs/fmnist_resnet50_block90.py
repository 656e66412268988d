"""ResNet-50 on Fashion-MNIST, 16x16 block pruning at 90%.

    python -m experiments.run --config=experiments/configs/fmnist_resnet50_block90.py \
        --workdir=runs/r50_block90

See fmnist_resnet50.pruned (ASP's recipe in one run). To fine-tune a dense run instead,
add `--config.init_from=runs/r50 --config.sparsity.begin_step=0`.
"""

from experiments.configs import fmnist_resnet50


def get_config():
    return fmnist_resnet50.pruned("block:16x16", 0.9)
