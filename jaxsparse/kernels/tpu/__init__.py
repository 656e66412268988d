"""The TPU kernel: block-sparse matmul on Pallas Mosaic."""
