"""Torch runtime of canvas-core: canvas tensor, attention layer, dispatcher, schedulers, heads.

Import the submodules directly (``canvas_core.runtime.canvas``, ...); this package imports
nothing eagerly so that ``import canvas_core.runtime`` stays cheap.
"""
