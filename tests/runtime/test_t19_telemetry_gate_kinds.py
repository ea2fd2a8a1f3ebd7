"""Telemetry of complex and empty gate parameters: a complex gate keeps its imaginary part (as
``/real`` and ``/imag`` series, ``/absmax`` its largest magnitude), with no ComplexWarning; an
empty gate gives no series and is named by ``empty_gates()`` and the summary."""

from __future__ import annotations

import warnings

import pytest
import torch

from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.runtime.telemetry import record_telemetry

torch.set_num_threads(1)

LAYOUT = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})


def _model(**gates):
    torch.manual_seed(0)
    model = torch.nn.Sequential(CanvasAttention(CanvasTopology([Connection(src="b", dst="a")]), LAYOUT, n_heads=2))
    for name, value in gates.items():
        model.register_parameter(name, torch.nn.Parameter(value))
    return model


def _recorded(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's ComplexWarning (dropping the imaginary part) included
        with record_telemetry(model) as tel:
            model(torch.randn(1, LAYOUT.num_positions, 8))
        return tel, tel.values(), tel.summary()


def test_a_complex_gate_keeps_both_parts():
    _, vals, _ = _recorded(_model(rot_gate=torch.tensor([0.5 + 2.0j, -1.0 - 0.25j]), one_gate=torch.tensor(3j)))
    assert vals["gate/rot_gate/0/real"] == 0.5 and vals["gate/rot_gate/0/imag"] == 2.0
    assert vals["gate/rot_gate/1/real"] == -1.0 and vals["gate/rot_gate/1/imag"] == -0.25
    assert vals["gate/one_gate/real"] == 0.0 and vals["gate/one_gate/imag"] == 3.0
    assert "gate/rot_gate/0" not in vals and "gate/one_gate" not in vals  # no half value under the plain name


def test_a_large_complex_gate_gives_its_mean_parts_and_largest_magnitude():
    z = torch.full((20,), 1.0 + 0.0j)
    z[3] = 3.0 + 4.0j  # |z| = 5
    _, vals, _ = _recorded(_model(big_gate=z))
    assert vals["gate/big_gate/absmax"] == pytest.approx(5.0)
    assert vals["gate/big_gate/mean/real"] == pytest.approx(22 / 20)
    assert vals["gate/big_gate/mean/imag"] == pytest.approx(4 / 20)


def test_real_gates_are_reported_as_before():
    _, vals, _ = _recorded(_model(loop_gate=torch.tensor([0.5, -0.25]), big_gate=torch.arange(20.0) - 25))
    assert vals["gate/loop_gate/0"] == 0.5 and vals["gate/loop_gate/1"] == -0.25
    assert vals["gate/big_gate/mean"] == pytest.approx(-15.5) and vals["gate/big_gate/absmax"] == 25.0


def test_an_empty_gate_is_named_not_silently_dropped():
    tel, vals, summary = _recorded(_model(empty_gate=torch.zeros(0), loop_gate=torch.tensor([0.5])))
    assert not any(k.startswith("gate/empty_gate") for k in vals)  # no value to log
    assert tel.empty_gates() == ["empty_gate"]
    assert "no elements" in summary and "empty_gate" in summary
