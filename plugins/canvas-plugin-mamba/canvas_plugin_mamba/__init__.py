"""canvas-plugin-mamba: the ``mamba`` attention type for canvas-core.

* :mod:`canvas_plugin_mamba.plugin` registers (lazily, without importing torch) the attention
  type ``mamba`` and the kernels ``mamba_ssm`` (CUDA, needs the ``mamba-ssm`` package:
  ``pip install canvas-plugin-mamba[cuda]``) and ``mamba_torch`` (pure PyTorch, any device).
* :mod:`canvas_plugin_mamba.module` holds :class:`MambaAttention`;
  :mod:`canvas_plugin_mamba.scan` the selective-scan implementations.
"""

__version__ = "0.1.0"
