"""The C++ CPU kernels (XLA FFI): the library loader, the conv wrappers, csrc/."""
