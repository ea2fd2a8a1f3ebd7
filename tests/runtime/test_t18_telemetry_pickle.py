"""A Telemetry object is refused by pickle and copy with a CanvasError naming what to keep instead
(during a recording, during a rollout, after both); the recording goes on and its numbers pickle."""

import copy
import io
import pickle

import pytest
import torch

import canvas_core
from canvas_core import record_telemetry
from canvas_core.errors import CanvasTypeError
from tests.runtime._rollout_models import build_model, frames
from tests.runtime.test_t17_rollout_telemetry_audit import LAYOUT, V, _topo, _x

_HOW = {"pickle": pickle.dumps, "copy": copy.copy, "deepcopy": copy.deepcopy,
        "torch.save": lambda t: torch.save(t, io.BytesIO())}


def _refused(tel) -> None:
    for do in _HOW.values():
        with pytest.raises(CanvasTypeError, match=r"Telemetry cannot be pickled.*values\(\)"):
            do(tel)


def test_telemetry_refuses_pickle_during_and_after_a_rollout():
    model, x = build_model(_topo(), LAYOUT, 1), _x()
    with torch.no_grad(), record_telemetry(model) as tel:
        model(x)
        _refused(tel)  # during the recording
        with canvas_core.incremental(model, LAYOUT) as roll:
            for f in frames(x, V)[:2]:
                roll.step(f)
                _refused(tel)  # during a rollout
        model(x)  # the recording goes on
    _refused(tel)  # after it
    assert tel.forwards == 4
    assert pickle.loads(pickle.dumps(tel.values())) == tel.values()
