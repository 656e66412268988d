"""ResNet-50 on Fashion-MNIST, N:M 2:4 (50%, the sparse-tensor-core pattern).

    python -m experiments.run --config=experiments/configs/fmnist_resnet50_nm24.py \
        --workdir=runs/r50_nm24

See fmnist_resnet50.pruned (ASP's recipe in one run). To fine-tune a dense run instead,
add `--config.init_from=runs/r50 --config.sparsity.begin_step=0`.
"""

from experiments.configs import fmnist_resnet50


def get_config():
    return fmnist_resnet50.pruned("2:4", 0.0)
