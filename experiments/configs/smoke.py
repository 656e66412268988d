"""A seconds-long run on a 2048-example subset of Fashion-MNIST, used by the tests.

    python -m experiments.run --config=experiments/configs/smoke.py --workdir=runs/smoke
"""

from experiments.configs import default


def get_config():
    c = default.get_config()
    c.model.name = "resnet_tiny"
    c.model.width = 0.125
    c.data.train_limit = 2048
    c.data.test_limit = 512
    c.train.epochs = 2.0
    c.train.batch_size = 64
    c.train.lr = 0.4
    c.train.warmup_epochs = 0.5
    c.train.log_every_steps = 8
    c.train.checkpoint_every_steps = 8
    c.eval.batch_size = 128
    c.bench.batch_size = 8
    c.bench.num_batches = 3
    c.bench.warmup = 1
    return c
