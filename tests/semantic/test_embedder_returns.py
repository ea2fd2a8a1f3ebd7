"""What an embedder returns: anything but numbers is refused with a SchemaError naming the
embedder and the region (audit: strings and None gave a bare ValueError / TypeError, and the
digit string "123" became the vector (1.0, 2.0, 3.0))."""

from __future__ import annotations

import pytest

from canvas_core.errors import SchemaError
from canvas_core.schema import CanvasLayout, CanvasSchema
from canvas_core.semantic import compute_semantic_embeddings


def _schema():
    return CanvasSchema(CanvasLayout(T=2, H=2, W=2, d_model=8,
                                     regions={"cam": (0, 2, 0, 1, 0, 2), "arm": (0, 2, 1, 2, 0, 2)}))


def _embedder(fn, model):
    class Embedder:
        model_name = model

        def embed(self, texts):
            return fn(texts)

    return Embedder()


@pytest.mark.parametrize("fn, match", [
    (lambda ts: ["123" for _ in ts], r"region 'cam' \(text 'cam'\): the vector is str '123', not a sequence of numbers"),
    (lambda ts: ["abc" for _ in ts], r"region 'cam'.*the vector is str 'abc'"),
    (lambda ts: [None for _ in ts], r"region 'cam'.*the vector is NoneType"),
    (lambda ts: [[1.0, None] for _ in ts], r"region 'cam'.*holds NoneType 'None', not a number"),
    (lambda ts: [["1.5", "2"] for _ in ts], r"region 'cam'.*holds str '1.5', not a number"),
    (lambda ts: [[1.0, 1j] for _ in ts], r"region 'cam'.*holds complex"),
    (lambda ts: None, r"returned NoneType.*region 'cam', region 'arm'"),
    (lambda ts: "12", r"returned str '12'"),
    (lambda ts: 7, r"returned int '7'"),
])
def test_non_numeric_vectors_are_refused_naming_embedder_and_region(fn, match):
    with pytest.raises(SchemaError, match=r"embedder 'toy/broken'.*" + match):
        compute_semantic_embeddings(_schema(), embedder=_embedder(fn, "toy/broken"))


def test_field_paths_form_names_the_path():
    with pytest.raises(SchemaError, match=r"embedder 'bad'.*path 'a.b' \(text 'a / b'\).*str '42'"):
        compute_semantic_embeddings(["a.b", "c"], _embedder(lambda ts: ["42"] * len(ts), "bad"))


def test_numbers_of_every_kind_still_work():
    import numpy as np
    import torch

    for fn in (lambda ts: np.ones((len(ts), 3), dtype=np.float32), lambda ts: torch.ones(len(ts), 3),
               lambda ts: [[1, 2.5, np.float64(3)] for _ in ts], lambda ts: ([1.0, 0.0, 2.0] for _ in ts)):
        out = compute_semantic_embeddings(_schema(), embedder=_embedder(fn, "ok"))
        assert {len(r.semantic_embedding) for r in out.layout.regions.values()} == {3}
        assert all(isinstance(x, float) for r in out.layout.regions.values() for x in r.semantic_embedding)
