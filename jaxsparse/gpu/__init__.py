"""NVIDIA GPU kernels: 2:4 through cuSPARSELt (C++ XLA FFI, built by ``python -m
jaxsparse.gpu.build``) and block-sparse through Pallas (see :mod:`jaxsparse.kernels`)."""
