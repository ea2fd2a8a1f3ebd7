"""The build probe calls a plugin type in the dtype a layer computes in (the default dtype) when its
parameters mix dtypes, whatever order they were registered in: a type that casts inside its forward
is accepted, one that fails is refused naming the connection."""

import pytest
import torch
from torch import nn

from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection
from canvas_core.errors import AttentionContractError


class _Float64First(nn.Module):
    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0, casts: bool = True) -> None:
        super().__init__()
        self.norm_scale = nn.Parameter(torch.ones(d_model, dtype=torch.float64))  # registered first
        self.proj = nn.Linear(d_model, d_model)  # the default dtype (float32)
        self.casts = casts

    def forward(self, queries, keys, values, key_mask=None):
        pooled = values.mean(1, keepdim=True).expand_as(queries)
        scale = self.norm_scale.to(queries.dtype) if self.casts else self.norm_scale
        return self.proj(pooled * scale)


def _build(casts: bool) -> CanvasAttention:
    lay = CanvasLayout(T=2, H=1, W=4, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 0, 1, 2, 4)})
    top = CanvasTopology(connections=[Connection("b", "b"), Connection("a", "b", t_src=0, t_dst=0, fn="f64_first")])
    return CanvasAttention(top, lay, d_model=8, n_heads=2,
                           attention_factory=lambda fn, *a, **k: _Float64First(*a, casts=casts, **k))


def test_a_type_casting_inside_is_accepted_whatever_its_parameter_order():
    layer = _build(casts=True)
    assert layer(torch.randn(2, 8, 8)).dtype == torch.float32


def test_a_type_failing_on_its_mixed_dtypes_is_refused_naming_the_connection():
    with pytest.raises(AttentionContractError, match=r"connection #1 'a' -> 'b'.*mixed dtypes"):
        _build(casts=False)
