"""``probe_rows``: the queries of a chunk share one forward pass at batch 1 and one batched
backward (``is_grads_batched``); a model autograd cannot vmap falls back to one batch row per
query.  Both give the dependency pattern of a dense reference Jacobian."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.runtime.verify_probe import probe_rows


class Masked(torch.nn.Module):
    """out[:, i] = tanh(sum_j M[i, j] x[:, j] W): output i depends on input j iff M[i, j]."""

    def __init__(self, mask: torch.Tensor, d: int, item_in_backward: bool = False) -> None:
        super().__init__()
        self.register_buffer("mask", mask.double())
        self.w = torch.nn.Parameter(torch.randn(d, d, dtype=torch.float64))
        self.item_in_backward = item_in_backward
        self.batches = []

    def forward(self, x):
        self.batches.append(int(x.shape[0]))
        if self.item_in_backward:
            x = _ItemInBackward.apply(x)
        return torch.tanh(torch.einsum("ij,bjd,de->bie", self.mask, x, self.w))


class _ItemInBackward(torch.autograd.Function):
    """Identity whose backward reads a Python number (no vmap can batch that)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * (1.0 if float(g.abs().sum().item()) >= 0 else 0.0)


def _reference(model, n, d, queries):
    x = torch.randn(1, n, d, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: model(t)[0], x)  # (n, d, 1, n, d)
    return (jac.abs().amax(dim=(1, 2, 4)) > 0).numpy()[queries]


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 12), d=st.integers(1, 3), chunk=st.integers(1, 8), density=st.floats(0.1, 0.9),
       seed=st.integers(0, 10 ** 6), item=st.booleans())
def test_probe_rows_matches_the_dense_jacobian_on_both_paths(n, d, chunk, density, seed, item):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, n, generator=g) < density
    torch.manual_seed(seed)
    model = Masked(mask, d, item_in_backward=item)
    queries = np.arange(n)
    s = probe_rows(model, lambda b, gen: torch.randn(b, n, d, generator=gen, dtype=torch.float64), queries, n,
                   probes=1, chunk=chunk, gen=torch.Generator().manual_seed(seed))
    ref = _reference(model, n, d, queries)
    assert np.array_equal(s > 1e-9, ref & mask.numpy()[queries])
    probed = model.batches[:-1]  # the last forward is the reference's
    if chunk > 1 and not item:  # one forward at batch 1 per chunk of queries
        assert probed == [1] * len(range(0, n, chunk))
    elif chunk > 1:  # the first chunk tries the batched backward, then one row per query
        assert probed[0] == 1 and probed[1:] == [min(chunk, n - k) for k in range(0, n, chunk)]
    else:
        assert probed == [1] * n
