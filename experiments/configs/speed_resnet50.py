"""ResNet-50 at 224x224: dense vs compiled sparse inference on random weights (no training).

    python -m experiments.study --config=experiments/configs/speed_resnet50.py \
        --workdir=runs/speed_resnet50 [--config.speed.layer_table=True]
    python -m experiments.study \
        --config=experiments/configs/speed_resnet50.py:block90_32,channel50 --workdir=...

Every variant of ``CATALOGUE`` is pruned by magnitude, compiled with ``js.sparsify``, checked
against the masked dense model and timed back to back with the dense model (see
``jaxsparse/study/speed.py``). ``scripts/bench_sparse.py`` picks variants from the catalogue
by name.
"""

from experiments.configs import study_fmnist, synthetic_resnet50_224
from jaxsparse.study.variants import Variant

CATALOGUE = {v.name: v for v in [
    # Coupled channel pruning of every conv (residual streams included) / interior convs only.
    Variant("channel50", "channel", 0.5, grouped=True, include=r"conv\w*/kernel$"),
    Variant("channel50_interior", "channel", 0.5),
    Variant("block90_8", "block:8x8", 0.9),
    Variant("block90_16", "block:16x16", 0.9),
    Variant("block90_32", "block:32x32", 0.9),
    Variant("block75_32", "block:32x32", 0.75),
    Variant("nm24", "2:4", policy="sparse"),
    Variant("unstructured90", "unstructured", 0.9),
    Variant("unstructured80", "unstructured", 0.8),
]}
DEFAULT = ("block90_32", "block90_16", "unstructured90", "unstructured80", "channel50")


def get_config(names=DEFAULT):
    """The speed study of ``names`` (a sequence, or a comma-separated string as
    ``--config=speed_resnet50.py:block90_32,channel50`` passes it)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in CATALOGUE]
    if unknown or not names:
        raise ValueError(f"speed_resnet50: unknown variant(s) {unknown or names!r}; use names "
                         f"from {sorted(CATALOGUE)}.")
    c = study_fmnist.get_config()
    c.mode = "speed"
    c.title = "ResNet-50 224x224: dense vs compiled sparse inference (random weights)"
    c.base = synthetic_resnet50_224.get_config()
    c.bench.batch_size = 16
    c.bench.warmup = 2
    c.bench.num_batches = 10
    c.distill.alpha = 0.0
    c.variants = [CATALOGUE[n].config() for n in names]
    return c
