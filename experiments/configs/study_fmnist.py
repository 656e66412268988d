"""The sparsity study on Fashion-MNIST (ResNet-18, width 0.25): dense and five sparse variants.

    python -m experiments.study --config=experiments/configs/study_fmnist.py \
        --workdir=runs/study_fmnist

Trains the dense baseline, fine-tunes each variant from it (NVIDIA ASP's one-shot recipe, or
SR-STE), compiles each with js.sparsify, evaluates the compiled model, and benchmarks them all
back to back. Add a variant with one more entry in `variants`. On an accelerator, use
`--config.base.model.name=resnet50 --config.base.precision=bfloat16` for the real experiment.
"""

import ml_collections

from experiments.configs import fmnist_resnet18
from jaxsparse.study.variants import sweep, variant  # noqa: F401  (the configs' helpers)


def get_config():
    c = ml_collections.ConfigDict()
    # "train": train dense, fine-tune every variant, compile, evaluate, benchmark (run_study);
    # "speed": random weights pruned by magnitude, compiled, checked and timed (run_speed).
    c.mode = "train"
    c.title = "Fashion-MNIST ResNet-18 (width 0.25) sparsity study"
    c.base = fmnist_resnet18.get_config()  # The dense baseline's experiment config.
    c.note = ""  # One line printed under the report's title.
    # An external reference accuracy whose 99% bar the report checks too (0: none), e.g.
    # MLPerf's ResNet-50 on ImageNet: 0.7646.
    c.reference_accuracy = 0.0
    c.reference_name = ""
    # Fine-tuning of each variant from the dense run: its own warm-up + cosine schedule.
    # A variant's recipe fields (jaxsparse.study.variants) override these.
    c.finetune = ml_collections.ConfigDict(dict(
        epochs=1.0, lr=0.05, warmup_epochs=0.1,
        prune_fraction=0.5,  # gradual variants reach their sparsity at this fraction.
        lr_schedule="cosine"))  # or "rewind": the dense run's schedule, its last `epochs`.
    # Knowledge distillation from the dense model in every fine-tune (alpha 0: off).
    c.distill = ml_collections.ConfigDict(dict(alpha=0.5, temperature=4.0))
    c.bench = ml_collections.ConfigDict(dict(batch_size=256, warmup=3, num_batches=20))
    # mode="speed" only: js.sparsify's backend; calibrate: every model compiled with
    # calibrate=True (each layer timed at its shape and run on the kernel measured fastest,
    # dense layers of the optimized dense model included); a per-layer timing table; a folder
    # for the date-stamped results files ("": only the workdir's report); the external dense
    # runtimes timed beside the JAX models (extra "baselines"; a runtime that is not
    # installed gets a row saying so; () for none); js.sparsify's micro_batch for every JAX
    # model ("auto", "none" or a count; external runtimes are also timed in chunks of each
    # micro-batch a JAX model used).
    c.speed = ml_collections.ConfigDict(dict(backend="auto", calibrate=True, layer_table=False,
                                             results_dir="",
                                             baselines=("onnxruntime", "openvino"),
                                             micro_batch="auto"))
    c.variants = [
        variant("nm24_oneshot", "one_shot", "2:4"),
        variant("nm24_srste", "sr_ste", "2:4"),
        # Coupled channel pruning: every conv, residual streams included.
        variant("channel50", "one_shot", "channel", 0.5, grouped=True,
                include=r"conv\w*/kernel$"),
        variant("block90", "one_shot", "block:16x16", 0.9),
        variant("unstructured90", "one_shot", "unstructured", 0.9),
    ]
    # Optional grid of sparsities for one pattern, added to the same report and plot
    # (see scripts/sweep.sh).
    c.sweep = ml_collections.ConfigDict(dict(pattern="block:16x16", sparsities=(),
                                             grouped=False, include=""))
    return c
