"""The kit's ``trainable`` check is sound at half precision: every builtin type passes at float16
and bfloat16, and a type that turns NaN while it trains fails with that reason, not "unchanged"."""

from __future__ import annotations

import pytest

from canvas_core.plugins import PluginHost, use_host
from canvas_core.plugins.builtin import BUILTIN_ATTENTION
from canvas_core.testing import check_attention_type

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _builtins_only():
    """Builtins only (no installed plugin is discovered) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with use_host(PluginHost(entry_points=lambda: [])):
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", sorted(BUILTIN_ATTENTION))
def test_builtin_type_passes_strict_at_half_precision(name, dtype):
    report = check_attention_type(name, d_model=16, n_heads=2, dtype=dtype, strict=True, raise_on_failure=False)
    assert report.ok, report.summary()
    # a type with parameters is really trained (not skipped) and its output moved
    if "trainable" in report.passed:
        assert report.details["trainable: output moved by"] > 0.0


class _NaNAfterAStep(torch.nn.Module):
    """Finite at initialisation; any Adam step (about lr in size) on ``p`` makes the log's
    argument negative, so the output is NaN from the second call of training on."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.lin = torch.nn.Linear(d_model, d_model)
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, queries, keys, values):
        pf = self.p.float()
        bump = (pf + (1 - 1e5 * pf * pf).log()).to(queries.dtype)  # d/dp = 1 at p = 0: it moves
        return self.lin(queries) + bump + 0 * values.mean(dim=1, keepdim=True).nan_to_num()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_a_type_turning_nan_while_training_fails_with_that_reason(dtype):
    report = check_attention_type(_NaNAfterAStep, d_model=8, n_heads=2, dtype=dtype, raise_on_failure=False)
    why = report.failed.get("trainable", "")
    assert "'_NaNAfterAStep' outputs NaN or inf after Adam step 1 of 5" in why, report.summary()
    assert f"dtype {dtype}" in why
    assert "unchanged" not in why


class _InfGradient(torch.nn.Module):
    """``sqrt(p)`` at ``p = 0``: finite output, infinite gradient on ``p``."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.lin = torch.nn.Linear(d_model, d_model)
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, queries, keys, values):
        return self.lin(queries) + self.p.sqrt() + 0 * values.mean(dim=1, keepdim=True).nan_to_num()


def test_a_non_finite_gradient_fails_naming_the_parameter():
    report = check_attention_type(_InfGradient, d_model=8, n_heads=2, dtype="float16", raise_on_failure=False)
    why = report.failed.get("trainable", "")
    assert "'_InfGradient': parameter 'p' gets a NaN or inf gradient at Adam step 1" in why, report.summary()
