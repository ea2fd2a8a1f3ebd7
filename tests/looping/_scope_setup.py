"""Shared set-up of the loop-scope tests: a tiny generic model and an obvious reference of the span
rule (documented in ``canvas_core/looping/span.py`` and ``loop_engine.py``), per sample, with the
adaptive exit written as a plain Python loop."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + torch.tanh(self.fc(self.ln(x)))


class Net(nn.Module):
    """``(B, N, 3) -> (B, N, 3)``: its output lives in its input space (scope="model" works)."""

    def __init__(self, d=12, depth=4):
        super().__init__()
        self.embed_dim = d
        self.patch_embed = nn.Linear(3, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(depth)])
        self.proj_out = nn.Linear(d, 3)

    def forward(self, x):
        h = self.patch_embed(x)
        for b in self.blocks:
            h = b(h)
        return self.proj_out(h)


def make_net(seed=0, d=12, depth=4):
    torch.manual_seed(seed)
    return Net(d, depth).eval()


def _rms(x):
    return x.float().pow(2).mean(-1, keepdim=True).sqrt()


def reference_span(net, part, x, i, j, n, tol=0.0):
    """What a span graft of blocks ``i..j-1`` must return for ``x``, sample by sample; returns the
    output and the per-sample iteration counts. ``part`` supplies the parameter values."""
    blocks = [getattr(b, "original", b) for b in net.blocks]
    L = part.max_loops
    outs, counts = [], []
    for s in range(x.shape[0]):
        h = net.patch_embed(x[s:s + 1])
        for b in blocks[:i]:
            h = b(h)
        x0 = h
        state = x0
        used = 0
        for t in range(n):
            u = state
            if t >= 1 and part.iter_norm == "rms":
                u = u * (_rms(x0) / (_rms(u) + 1e-6))
            if "loop_emb" in part._parameters:
                u = u + part.loop_emb[min(t, L - 1)]
            if part.inject == "add":
                u = u + part.inject_gate[0] * x0
            elif part.inject == "concat":
                lin = part.inject_proj[0]
                u = u + torch.cat([u, x0], -1) @ lin.weight.T + lin.bias
            y = u
            for b in blocks[i:j]:
                y = b(y)
            if t == 0:
                new = y
            else:
                a = {"replace": 1.0, "damped": part.damping}.get(part.update)
                if a is None:
                    a = part.loop_gate[min(t - 1, part.loop_gate.numel() - 1)]
                new = state + a * (y - state)
            rel = (new - state).norm() / (state.norm() + 1e-12)
            used += 1
            state = new
            if tol > 0 and t >= 1 and rel < tol:
                break
        h = state
        for b in blocks[j:]:
            h = b(h)
        outs.append(net.proj_out(h))
        counts.append(used)
    return torch.cat(outs), torch.tensor(counts)


def randomize_loop_params(part, gen, scale=0.5):
    """Give every loop parameter of ``part`` a random value (gates in (0, 1))."""
    with torch.no_grad():
        for name, p in part.named_loop_parameters():
            if name == "loop_gate":
                p.copy_(torch.rand(p.shape, generator=gen) * 0.9 + 0.05)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


class RowCounter:
    """Counts the rows (batch size) of every call of the given modules."""

    def __init__(self, modules):
        self.rows = []
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in modules]

    def _hook(self, module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()))
        self.rows.append(int(x.shape[0]))

    def close(self):
        for h in self.handles:
            h.remove()


def check_per_sample(m, args, min_splits=1, max_loops=6):
    """Every sample of an adaptive-exit run of ``m`` equals the fixed-depth run at its own count
    (over a sweep of ``exit_tol``; at least ``min_splits`` of them must split the batch)."""
    import canvas_core
    import numpy as np

    fixed = {}
    with torch.no_grad():
        for n in range(1, max_loops + 1):
            canvas_core.set_loops(m, n)
            fixed[n] = m(*args)
    splits = 0
    for tol in np.geomspace(1e-3, 2, 25):
        canvas_core.set_loops(m, max_loops, exit_tol=float(tol))
        with torch.no_grad():
            out = m(*args)
        counts = canvas_core.loop_counts(m)
        if len(set(counts.tolist())) == 1:
            continue
        splits += 1
        for s in range(out.shape[0]):
            assert torch.allclose(out[s], fixed[int(counts[s])][s], atol=1e-5), (tol, counts.tolist(), s)
    assert splits >= min_splits
