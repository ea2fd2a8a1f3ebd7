"""Compiled CPU kernels: building a C++ source on first use (:mod:`canvas_core.kernels.cpu_build`)."""
