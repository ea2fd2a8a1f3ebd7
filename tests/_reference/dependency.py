"""Dependency probes for the issue-23 rule: which inputs an output actually depends on, and which
pairs the topology links (computed independently, from DESIGN.md's semantics, by the dense
reference's ``connection_pairs``).

* :func:`dependency_pattern`: ``(N_out, N_in)`` bool, ``[p, j]`` True when output row p has a
  non-zero gradient with respect to input row j (one backward pass per output row, against a
  fixed random weight vector, so a row whose output is a non-trivial function of j shows it).
* :func:`linked_pattern`: ``(N, N)`` bool from the dense reference, ``[p, j]`` True when some
  connection (of the given fn types) links query p to key j with weight > 0.
* :func:`perturb_parameters`: move every parameter off its initial value, so that zero-initialised
  gates (``gated``'s ``tanh(alpha)``, a backbone branch's gate) do not hide a dependency.
* :func:`first_violation`: the first ``(p, j)`` a pattern has outside what is allowed, described.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from canvas_ref_dense_reference import weight_matrices  # registered by tests/conftest.py

__all__ = ["dependency_pattern", "linked_pattern", "perturb_parameters", "first_violation"]


def dependency_pattern(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                       rows: Optional[Iterable[int]] = None) -> torch.Tensor:
    """``x`` ``(1, N, D)``; ``fn(x)`` ``(1, N_out, D_out)``.  Returns ``(N_out, N)`` bool."""
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    n_out = out.shape[1]
    g = torch.Generator().manual_seed(11)
    r = torch.randn(tuple(out.shape[1:]), generator=g, dtype=torch.float64).to(out.dtype)
    dep = torch.zeros(n_out, x.shape[1], dtype=torch.bool)
    if not out.requires_grad:
        return dep
    for p in range(n_out) if rows is None else rows:
        (grad,) = torch.autograd.grad((out[0, p] * r[p]).sum(), x, retain_graph=True, allow_unused=True)
        if grad is not None:
            dep[p] = (grad[0] != 0).any(-1)
    return dep


def linked_pattern(topology, layout, fns: Optional[Iterable[str]] = None) -> torch.Tensor:
    """``(N, N)`` bool: some connection (of a type in ``fns``; all when None) links ``[p, j]``."""
    W, _ = weight_matrices(topology, layout)
    keep = None if fns is None else set(fns)
    n = layout.num_positions
    out = torch.zeros(n, n, dtype=torch.bool)
    for f, M in W.items():
        if keep is None or f in keep:
            out |= M > 0
    return out


def perturb_parameters(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point():
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))


def first_violation(dep: torch.Tensor, allowed: torch.Tensor, describe: Callable[[int], str] = str) -> Optional[str]:
    bad = torch.nonzero(dep & ~allowed)
    if bad.numel() == 0:
        return None
    p, j = (int(v) for v in bad[0])
    return (f"{int(bad.shape[0])} dependencies outside the linked pattern, e.g. output {describe(p)} "
            f"depends on input {describe(j)}")
