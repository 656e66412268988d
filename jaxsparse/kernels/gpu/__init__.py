"""NVIDIA GPU kernels: the Pallas block-sparse matmul and cuSPARSELt 2:4 (XLA FFI, csrc/)."""
