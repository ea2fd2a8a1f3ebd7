"""A SemanticConditioner with random embeddings and residuals, for the tests of saved region names."""

from __future__ import annotations

from typing import Iterable

import torch

from canvas_core.runtime.semantic_conditioner import SemanticConditioner


def random_conditioner(names: Iterable[str], seed: int = 0) -> SemanticConditioner:
    """A width-8 conditioner over ``names`` (4-wide embeddings), every tensor drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    c = SemanticConditioner(8, 4, {n: torch.randn(4, generator=g) for n in names})
    with torch.no_grad():
        c.residuals.normal_(generator=g)
    return c
