"""A float64 ``hyena`` computes its positional features and decay window in float64: its filters
equal a float64 computation by hand to float64 rounding (float32 features left 1e-7 errors, which
also made a compiled float64 layer differ from the eager one by far more than float64 rounding)."""

import torch

from canvas_core import create_attention


def _by_hand(m, L: int) -> torch.Tensor:
    lag = torch.arange(L, dtype=torch.float64)
    t = lag / m.max_len
    b = torch.arange(m.n_bands, dtype=torch.float64)
    ang = lag[:, None] / (float(m.max_len) ** (b / m.n_bands))[None, :]
    z = torch.cat([t[:, None], torch.sin(ang), torch.cos(ang)], dim=-1)
    h = m.filter_mlp(z).view(L, m.order, m.d_model).transpose(0, 1)
    return h * torch.exp(-t[:, None] * m.decay_rates.double()[None, :])


def test_float64_filters_are_float64_accurate():
    torch.manual_seed(0)
    m = create_attention("hyena", 8, 2).double()
    with torch.no_grad():
        for p in m.filter_mlp.parameters():
            p.mul_(3.0)  # larger filters: float32 features would show at 1e-6
        got = m.filters(700, dtype=torch.float64)
        want = _by_hand(m, 700)
    assert got.dtype == torch.float64
    assert (got - want).abs().max().item() <= 1e-12 * max(1.0, want.abs().max().item())


def test_float32_filters_keep_their_dtype():
    m = create_attention("hyena", 8, 2)
    assert m.filters(33).dtype == torch.float32
