"""The conformance kit reports a type that writes into its inputs with one named error in every
property, and builds a class handed to it exactly as it builds a registered name.

Regressions: ``gradients`` and ``trainable`` reported torch's bare RuntimeError ("modified by an
inplace operation"), which names neither the type nor the fix; a canvas-engineering constructor
``__init__(self, dim, heads=4, p=0.0)`` given as a class failed ``construct`` (the kit called it
by keyword), though the same class registered under a name passed; a factory keyword the class
does not take was reported as Python's bare TypeError, without what the type accepts.
"""

from __future__ import annotations

import pytest

import canvas_core.plugins as P
from canvas_core.plugins import PluginHost, use_host
from canvas_core.testing import check_attention_type

torch = pytest.importorskip("torch")
nn = torch.nn
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _host():
    with use_host(PluginHost(entry_points=lambda: [])) as h:
        yield h


class WritesValues(nn.Module):
    """Scales its ``values`` argument in place after autograd saved it for ``lin``'s backward."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.lin = nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values):
        out = self.lin(values).mean(1, keepdim=True) + queries
        values.mul_(2.0)
        return out


class MeanOfKeys(nn.Module):
    """A correct per-key-set type built canvas-engineering's way: ``cls(d_model, n_heads, dropout)``."""

    def __init__(self, dim, heads=4, p=0.0):
        super().__init__()
        self.got = (dim, heads, p)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries, keys, values):
        w = torch.softmax(queries @ keys.transpose(1, 2) / keys.shape[-1] ** 0.5, -1)
        return self.proj(w @ values)


class Windowed(MeanOfKeys):
    """The keyword protocol with an option of its own."""

    def __init__(self, d_model, n_heads=4, dropout=0.0, window_size=3):
        super().__init__(d_model, n_heads, dropout)
        self.window_size = window_size


def _kit(target, **kw):
    return check_attention_type(target, d_model=16, raise_on_failure=False, **kw)


# ---------------------------------------------------------------------- (a) writes into its inputs
@pytest.mark.parametrize("registered", [True, False])
def test_every_property_reports_the_same_named_in_place_refusal(registered):
    if registered:
        P.register_attention("writes_values_t", WritesValues)
        report, who = _kit("writes_values_t"), "attention type 'writes_values_t' (WritesValues)"
    else:
        report, who = _kit(WritesValues), "attention type WritesValues"
    assert {"gradients", "trainable", "batch independence", "dependency exactness"} <= set(report.failed)
    for prop, why in report.failed.items():
        assert "RuntimeError" not in why, (prop, why)
        assert why.startswith(f"raised AttentionContractError: {who} modifies its input 'values' in place"), (prop, why)
        assert "compute on a copy" in why
    assert len(set(report.failed.values())) == 1  # one message, whichever property met it first
    with pytest.raises(AssertionError, match=r"\[gradients\] raised AttentionContractError: .*WritesValues"):
        check_attention_type(WritesValues, d_model=16)


def test_a_type_writing_into_its_own_copy_passes():
    class Copies(WritesValues):
        def forward(self, queries, keys, values):
            values = values.clone()
            values.mul_(2.0)  # its own tensor, written before anything saved it
            return self.lin(values).mean(1, keepdim=True) + queries

    report = _kit(Copies)
    assert report.ok, report.summary()
    assert {"gradients", "trainable"} <= set(report.passed)


# ---------------------------------------------------------------------- (b) a class as a name
def test_a_canvas_engineering_constructor_given_as_a_class_passes_like_its_name():
    by_class = _kit(MeanOfKeys, n_heads=2)
    assert by_class.ok, by_class.summary()
    P.register_attention("mean_of_keys_t", MeanOfKeys)
    by_name = _kit("mean_of_keys_t", n_heads=2)
    assert by_class.passed == by_name.passed and not by_class.skipped
    built = []
    check_attention_type(lambda *a: built.append(MeanOfKeys(*a)) or built[-1], d_model=8, n_heads=2)
    assert built and built[0].got == (8, 2, 0.0)  # called positionally, dropout 0, as the kit promises


def test_a_factory_without_n_heads_is_built_without_it():
    def factory(d_model, dropout=0.0):
        return MeanOfKeys(d_model)

    assert _kit(factory).ok


# ---------------------------------------------------------------------- (c) a misspelt factory keyword
@pytest.mark.parametrize("registered", [True, False])
def test_a_misspelt_keyword_names_itself_and_what_the_type_accepts(registered):
    if registered:
        P.register_attention("windowed_t", Windowed)
    report = _kit("windowed_t" if registered else Windowed, windw_size=5)
    assert list(report.failed) == ["construct"]
    why = report.failed["construct"]
    assert why.startswith("building it raised CanvasTypeError: ")
    assert "does not take 'windw_size'" in why
    assert "it accepts ['d_model', 'dropout', 'n_heads', 'window_size']" in why
    assert _kit("windowed_t" if registered else Windowed, window_size=5).ok


def test_a_misspelt_keyword_of_a_positional_constructor_lists_its_parameters():
    why = _kit(MeanOfKeys, scal=2.0).failed["construct"]
    assert "CanvasTypeError" in why and "'scal'" in why and "its parameters are ['dim', 'heads', 'p']" in why
