"""ResNet-50 at 224x224 on synthetic data: inference throughput only.

    python -m experiments.run --config=experiments/configs/synthetic_resnet50_224.py \
        --workdir=runs/bench_r50 --config.mode=bench --config.bench.batch_size=16
"""

from experiments.configs import default


def get_config():
    c = default.get_config()
    c.mode = "bench"
    c.model.name = "resnet50"
    c.model.stem = "imagenet"
    c.data.name = "synthetic"
    c.data.shape = (224, 224, 3)
    c.data.num_classes = 1000
    c.data.synthetic_examples = 512
    c.train.batch_size = 64
    c.train.epochs = 1.0
    c.bench.batch_size = 16
    c.bench.warmup = 3
    c.bench.num_batches = 20
    return c
