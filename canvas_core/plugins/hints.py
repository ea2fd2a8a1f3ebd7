"""The hints of the plugin layer's messages: which distribution provides a name that is not
installed (the install hint of unknown-name errors: "pip install canvas-plugin-mamba"), and which
distribution installs an importable module.  Extend the table when a first-party plugin ships a name."""

from __future__ import annotations

import re
from typing import Dict, Optional

#: distribution -> registry kind -> the names it provides (space separated).
_SHIPPED = {
    "canvas-plugin-mamba": {"attention": "mamba", "kernels": "mamba_ssm mamba_torch"},
    "canvas-plugin-canvit": {"attention": "canvas_read canvas_write"},
    "canvas-plugin-cogvideox": {"attention": "cogvideox", "backbones": "cogvideox"},
    "canvas-backend-flex": {"kernels": "flex flex_attention"},
    "canvas-backend-xformers": {"kernels": "xformers"},
    "canvas-plugin-fla": {"kernels": "fla_rwkv"},
    "canvas-plugin-mochi": {"backbones": "mochi"},
    "canvas-plugin-vit": {"backbones": "vit"},
    "canvas-plugin-identity": {"identity": "cross_attention slot_attention"},
    "canvas-plugin-semantic": {"embedders": "minilm sentence-transformers sentence_transformers"},
}

#: importable module name -> the pip distribution that provides it, where they differ.
PIP_NAMES: Dict[str, str] = {"fla": "flash-linear-attention", "mamba_ssm": "mamba-ssm", "causal_conv1d": "causal-conv1d",
                             "sentence_transformers": "sentence-transformers", "sklearn": "scikit-learn", "PIL": "pillow"}


def pip_name(module: str) -> str:
    """The distribution to ``pip install`` for an importable module name."""
    top = str(module).split(".")[0]
    return PIP_NAMES.get(top, top.replace("_", "-"))


def normalize_dist(name: str) -> str:
    """PEP 503 normalised distribution / entry-point name (``Canvas_Plugin.X`` -> ``canvas-plugin-x``)."""
    return re.sub(r"[-_.]+", "-", str(name)).lower()


def provider_hint(kind: str, name: str) -> Optional[str]:
    """The distribution known to provide ``name`` in registry ``kind``, or None."""
    return next((dist for dist, kinds in _SHIPPED.items() if name in kinds.get(kind, "").split()), None)


def exc_text(exc: BaseException, limit: int = 2000) -> str:
    """``"Type: message"`` of an exception raised by a plugin's code, for our messages: one whose
    ``str()`` itself raises is named as such instead of raising again, and a message longer than
    ``limit`` characters is cut (a plugin record's traceback keeps it whole)."""
    try:
        text = str(exc)
    except Exception as inner:
        text = f"<its message cannot be shown: str() raised {type(inner).__name__}>"
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text):,} characters in all)"
    return f"{type(exc).__name__}: {text}"
