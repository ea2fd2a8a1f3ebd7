"""Which distribution provides a name that is not installed: the install-hint table of the
unknown-name errors ("pip install canvas-plugin-mamba").  Extend it when a first-party plugin
ships a name."""

from __future__ import annotations

import re
from typing import Dict, Optional

#: registry kind -> name -> distribution providing it.
KNOWN_PROVIDERS: Dict[str, Dict[str, str]] = {
    "attention": {
        "mamba": "canvas-plugin-mamba",
        "canvas_read": "canvas-plugin-canvit",
        "canvas_write": "canvas-plugin-canvit",
        "cogvideox": "canvas-plugin-cogvideox",
    },
    "kernels": {
        "flex": "canvas-backend-flex",
        "flex_attention": "canvas-backend-flex",
        "xformers": "canvas-backend-xformers",
        "fla_rwkv": "canvas-plugin-fla",
        "mamba_ssm": "canvas-plugin-mamba",
        "mamba_torch": "canvas-plugin-mamba",
    },
    "backbones": {
        "cogvideox": "canvas-plugin-cogvideox",
        "mochi": "canvas-plugin-mochi",
        "vit": "canvas-plugin-vit",
    },
    "identity": {
        "cross_attention": "canvas-plugin-identity",
        "slot_attention": "canvas-plugin-identity",
    },
    "embedders": {
        "minilm": "canvas-plugin-semantic",
        "sentence-transformers": "canvas-plugin-semantic",
        "sentence_transformers": "canvas-plugin-semantic",
    },
}

#: registry kind -> distribution providing any name of that kind not in the table above.
DEFAULT_PROVIDERS: Dict[str, str] = {}

#: importable module name -> the pip distribution that provides it, where they differ.
PIP_NAMES: Dict[str, str] = {
    "fla": "flash-linear-attention",
    "mamba_ssm": "mamba-ssm",
    "causal_conv1d": "causal-conv1d",
    "sentence_transformers": "sentence-transformers",
    "sklearn": "scikit-learn",
    "PIL": "pillow",
}


def pip_name(module: str) -> str:
    """The distribution to ``pip install`` for an importable module name."""
    top = str(module).split(".")[0]
    return PIP_NAMES.get(top, top.replace("_", "-"))


def normalize_dist(name: str) -> str:
    """PEP 503 normalised distribution / entry-point name (``Canvas_Plugin.X`` -> ``canvas-plugin-x``)."""
    return re.sub(r"[-_.]+", "-", str(name)).lower()


def provider_hint(kind: str, name: str) -> Optional[str]:
    """The distribution known to provide ``name`` in registry ``kind``, or None."""
    return KNOWN_PROVIDERS.get(kind, {}).get(name, DEFAULT_PROVIDERS.get(kind))


def install_hint(dist: str) -> str:
    """``pip install <dist>``."""
    return f"pip install {dist}"
