"""Training, evaluation, checkpointing, logging and benchmarking of experiments."""
