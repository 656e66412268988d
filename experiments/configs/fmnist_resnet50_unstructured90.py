"""ResNet-50 on Fashion-MNIST, unstructured magnitude pruning at 90% (mask-only reference).

    python -m experiments.run --config=experiments/configs/fmnist_resnet50_unstructured90.py \
        --workdir=runs/r50_unstructured90

See fmnist_resnet50.pruned (ASP's recipe in one run). To fine-tune a dense run instead,
add `--config.init_from=runs/r50 --config.sparsity.begin_step=0`.
"""

from experiments.configs import fmnist_resnet50


def get_config():
    return fmnist_resnet50.pruned("unstructured", 0.9)
