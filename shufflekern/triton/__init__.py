"""Triton kernels.  Imported lazily by shufflekern.ops so that TRITON_INTERPRET can be set before the
kernels are defined, and so that `import shufflekern` does not import triton."""
