"""``LoopedBlockWrapper``'s constructor (canvas-engineering's public API) refuses bad arguments
with a ``CanvasError`` naming the argument, instead of torch's ``RuntimeError`` / ``TypeError`` /
``IndexError`` or a wrapper whose output is NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from canvas_core.errors import BackboneError, CanvasError, CanvasTypeError
from canvas_core.looping.wrapper import BlockIO, LoopedBlockWrapper

torch.set_num_threads(1)
TWO = BlockIO(("a", "b"))


@pytest.mark.parametrize("kw, cls, match", [
    (dict(io=TWO, stream_dims=(4, -1)), BackboneError, r"stream 'b' the width -1"),
    (dict(io=TWO, stream_dims=(4, 2.5)), BackboneError, r"stream 'b' the width 2\.5"),
    (dict(gate_init_bias=float("nan")), BackboneError, "gate_init_bias must be a finite number"),
    (dict(gate_init_bias=float("inf")), BackboneError, "gate_init_bias must be a finite number"),
    (dict(gate_init_bias="0.5"), BackboneError, "gate_init_bias must be a finite number"),
    (dict(gate_init_bias=torch.tensor(0.5, device="meta")), BackboneError, "gate_init_bias must be a finite number"),
    (dict(io=("a",)), CanvasTypeError, "io must be a BlockIO"),
    (dict(io=BlockIO(())), BackboneError, "names no looped stream"),
    (dict(stream_dims=(8,)), BackboneError, r"embed_dim=4 but stream_dims\[0\]=8.*leave embed_dim out"),
    (dict(block_idx="x"), BackboneError, "block_idx must be an int"),
])
def test_bad_constructor_arguments_are_refused(kw, cls, match):
    with pytest.raises(cls, match=match) as e:
        LoopedBlockWrapper(nn.Linear(4, 4), **{"embed_dim": 4, **kw})
    assert isinstance(e.value, CanvasError)


def test_good_arguments_still_build():
    w = LoopedBlockWrapper(nn.Linear(4, 4), np.int64(2), 3, 4, np.float32(0.25), io=BlockIO(("x",)),
                           stream_dims=(np.int64(4),))
    assert w.block_idx == 2 and type(w.block_idx) is int and w.stream_dims == (4,)
    assert torch.allclose(w.loop_gate, torch.full((2,), 0.25))
    assert w(torch.randn(2, 3, 4)).shape == (2, 3, 4)


def test_what_canvas_engineering_accepts_still_builds():
    """stream_dims without embed_dim (the default 256 is not read then), a negative block_idx (a
    label there) and a 0-d tensor gate bias build as they did."""
    w = LoopedBlockWrapper(nn.Linear(64, 64), 0, 3, stream_dims=(64, 32), io=TWO)
    assert w.embed_dim == 64 and w.stream_dims == (64, 32)
    assert LoopedBlockWrapper(nn.Linear(4, 4), -1, 2, 4).block_idx == -1
    w = LoopedBlockWrapper(nn.Linear(4, 4), 0, 3, 4, torch.tensor(0.5))
    assert torch.allclose(w.loop_gate, torch.full((2,), 0.5))
