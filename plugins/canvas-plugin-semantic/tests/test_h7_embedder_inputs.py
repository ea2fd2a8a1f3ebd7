"""MiniLMEmbedder argument checks: one string is not a list of texts (list("abc") would embed
each character), non-iterables and bad batch sizes / devices are refused naming the fix."""

from __future__ import annotations

import numpy as np
import pytest

from canvas_core.errors import CanvasTypeError, UnavailableError
from canvas_plugin_semantic.embedder import MiniLMEmbedder


class _Encoder:
    def encode(self, texts, **kwargs):
        return np.ones((len(texts), 3))


def _embedder() -> MiniLMEmbedder:
    e = MiniLMEmbedder.__new__(MiniLMEmbedder)  # the checks run before the model; no weights needed
    e._model, e.batch_size = _Encoder(), 4
    return e


@pytest.mark.parametrize("texts, match", [("hello", "one string 'hello'; pass \\[text\\]"),
                                          (b"hi", "one string"), (None, "got NoneType"), (3, "got int"),
                                          (["a", None], "an item of type NoneType")])
def test_embed_refuses_what_is_not_a_list_of_strings(texts, match):
    with pytest.raises(CanvasTypeError, match=match):
        _embedder().embed(texts)


def test_embed_takes_any_iterable_of_strings():
    assert len(_embedder().embed(t for t in ("a", "b"))) == 2


@pytest.mark.parametrize("kwargs, match", [({"batch_size": 0}, "batch_size"), ({"batch_size": "8"}, "batch_size"),
                                           ({"device": 3}, "device must be")])
def test_constructor_arguments_are_checked(kwargs, match):
    with pytest.raises(CanvasTypeError, match=match):
        MiniLMEmbedder(**kwargs)


def test_an_unusable_device_is_unavailable_not_a_bare_runtime_error(monkeypatch):
    import sentence_transformers

    def refuse(*args, **kwargs):
        raise RuntimeError("Found no NVIDIA driver on your system")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", refuse)
    with pytest.raises(UnavailableError, match="device 'cuda:0'.*device='cpu'"):
        MiniLMEmbedder(device="cuda:0")
