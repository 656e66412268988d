"""Defaults shared by every experiment config (not run on its own).

Each experiment config imports this module, calls ``get_config()`` and overrides a few fields.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The default configuration; every field is documented inline."""
    c = ml_collections.ConfigDict()
    c.mode = "train"  # "train" (train + eval + bench) or "bench" (inference throughput only).
    c.seed = 0  # Initialisation and data-order seed.
    c.precision = "float32"  # "float32" or "bfloat16" (bf16 compute, f32 params).
    c.progress = True  # tqdm progress bar on the terminal.
    c.init_from = ""  # Workdir of a finished run to start from (dense-to-sparse fine-tuning).

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"  # See jaxsparse.models.MODELS.
    c.model.stem = "small"  # "imagenet" (224 px) or "small" (28/32 px).
    c.model.width = 1.0  # Channel multiplier.
    c.model.pretrained = ""  # A torchvision ResNet state_dict as .safetensors (docs/library.md).

    c.data = ml_collections.ConfigDict()
    c.data.name = "fashion_mnist"  # "fashion_mnist", "imagefolder" (dir/train|val/<class>/*)
    #                                or "synthetic".
    c.data.dir = ""  # Empty: /usr/share/datasets/fashion-mnist (Debian dataset-fashion-mnist).
    c.data.shape = (28, 28, 1)  # Image shape (H, W, C): synthetic data, bench mode, and the
    #                             crop size of an image folder (224, 224, 3 for ImageNet).
    c.data.num_classes = 10
    c.data.train_limit = 0  # Use only the first N training examples (0 = all).
    c.data.test_limit = 0  # Use only the first N test examples (0 = all).
    c.data.synthetic_examples = 1024  # Size of each synthetic split.
    c.data.augment = False  # Training batches: random crop (2 px zero padding) + flip.

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 10.0
    c.train.num_steps = 0  # If > 0, overrides epochs.
    c.train.batch_size = 128  # Global batch, split across all devices.
    c.train.lr = 0.1  # For batch 256; scaled linearly with batch_size.
    c.train.momentum = 0.9
    c.train.nesterov = True
    c.train.weight_decay = 5e-5
    c.train.warmup_epochs = 1.0
    c.train.schedule_start_epoch = 0.0  # LR rewinding: replay the epochs-long schedule from
    #                                     here (the run lasts epochs - this; 0: from the start).
    c.train.label_smoothing = 0.0
    c.train.log_every_steps = 50
    c.train.eval_every_epochs = 1
    c.train.checkpoint_every_steps = 200
    c.train.keep_checkpoints = 3

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 256

    c.bench = ml_collections.ConfigDict()
    c.bench.enabled = True  # Measure inference throughput at the end of training.
    c.bench.batch_size = 16
    c.bench.warmup = 3
    c.bench.num_batches = 20

    c.distill = ml_collections.ConfigDict()
    c.distill.alpha = 0.0  # Knowledge distillation weight a: (1-a) CE + a T^2 KL (0: off).
    c.distill.temperature = 4.0  # Distillation temperature T.
    c.distill.teacher = ""  # Workdir of a finished run of the same model: the teacher.

    c.sparsity = ml_collections.ConfigDict()
    c.sparsity.method = "none"  # "none", "one_shot", "gradual" or "sr_ste".
    c.sparsity.pattern = "unstructured"  # "N:M", "block:HxW", "channel" or "unstructured".
    c.sparsity.sparsity = 0.0  # Fraction of weights removed (ignored by N:M, fixed at 1 - N/M).
    c.sparsity.distribution = "uniform"  # "uniform", "erk" or "global".
    c.sparsity.begin_step = 0  # one_shot prunes here; gradual starts here.
    c.sparsity.end_step = -1  # gradual reaches the final sparsity here (-1: end_fraction).
    c.sparsity.end_fraction = 0.75  # gradual, with end_step=-1: the end as a fraction of the run.
    c.sparsity.frequency = 100  # gradual: steps between mask updates.
    c.sparsity.include = ""  # Regex over parameter paths (empty: conv/dense kernels, not the
    #                          first conv or the classifier).
    c.sparsity.sr_ste_decay = 2e-4  # SR-STE's sparse-refined decay coefficient.
    c.sparsity.grouped = False  # channel: prune coupled layers (residual streams) together.
    return c
