"""Every builtin attention type passes the conformance suite (strict: the runtime's contract)."""

from __future__ import annotations

import pytest

from canvas_core.plugins.builtin import BUILTIN_ATTENTION

pytest.importorskip("torch")


@pytest.mark.parametrize("name", sorted(BUILTIN_ATTENTION))
def test_builtin_type_conforms(host, name):
    from canvas_core.testing import check_attention_type

    report = check_attention_type(name, d_model=32, n_heads=4, strict=True)
    assert report.ok


@pytest.mark.parametrize("name", ["cross_attention", "pooling"])
def test_builtin_type_conforms_other_sizes(host, name):
    from canvas_core.testing import check_attention_type

    assert check_attention_type(name, d_model=8, n_heads=2, batch=2, seed=7).ok


def test_suite_catches_a_broken_builtin_like_type(host):
    """Negative control: a type returning NaN on an empty key set fails the suite."""
    import torch

    import canvas_core.plugins as P
    from canvas_core.testing import check_attention_type

    class NaNOnEmpty(torch.nn.Module):
        def __init__(self, d_model, n_heads=4, dropout=0.0):
            super().__init__()
            self.lin = torch.nn.Linear(d_model, d_model)

        def forward(self, queries, keys, values, key_mask=None):
            pooled = values.mean(dim=1, keepdim=True)  # NaN when Nk == 0
            return self.lin(queries) + pooled

    P.register_attention("nan_on_empty", NaNOnEmpty)
    with pytest.raises(AssertionError, match=r"'nan_on_empty'.*\[empty keys\].*NaN"):
        check_attention_type("nan_on_empty")
