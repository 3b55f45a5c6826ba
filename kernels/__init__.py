"""Triton kernels of mhc_pre, one module per stage (mhc_ops.kernels)."""
