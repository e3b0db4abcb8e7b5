"""Triton kernels for VMamba's selective scan and 2D cross-scan."""
