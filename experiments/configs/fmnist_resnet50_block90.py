"""ResNet-50 on Fashion-MNIST, 16x16 block pruning at 90%.

    python -m experiments.run --config=experiments/configs/fmnist_resnet50_block90.py \
        --workdir=runs/r50_block90

NVIDIA ASP's recipe in one run: train dense for the first two thirds, prune one-shot by
magnitude at `sparsity.begin_step`, fine-tune the last third with the mask fixed. To fine-tune
an existing dense run instead, add `--config.init_from=runs/r50 --config.sparsity.begin_step=0`.
"""

from experiments.configs import fmnist_resnet50


def get_config():
    c = fmnist_resnet50.get_config()
    c.sparsity.method = "one_shot"
    c.sparsity.pattern = "block:16x16"
    c.sparsity.sparsity = 0.9
    c.sparsity.begin_step = int(c.train.epochs * 2 / 3) * (60000 // c.train.batch_size)
    return c
