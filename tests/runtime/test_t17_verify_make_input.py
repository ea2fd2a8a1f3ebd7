"""The value check of ``verify_structure`` draws its perturbed inputs through ``make_input``, and
``transfer_distance`` names the argument whose embedding has no direction.

Regression: the value check replaced a group's inputs with ``3 * randn`` whatever ``make_input``
drew, so a model taking only positive inputs (``layer(x.log())``) that verified before was refused
with "returns NaN"; and a zero or empty ``semantic_embedding`` was refused without saying which
argument held it or how to fix it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection, verify_structure
from canvas_core.errors import SchemaError
from canvas_core.schema.region import RegionSpec, transfer_distance

torch.set_num_threads(1)

LAYOUT = CanvasLayout(T=5, spatial_shape=(3, 2), d_model=16,
                      regions={"video": (0, 5, 0, 2, 0, 2), "action": (0, 5, 2, 3, 0, 1)})
N = LAYOUT.num_positions
ACTION = torch.as_tensor(LAYOUT.region_indices("action"))


def _topology():
    return CanvasTopology(connections=[Connection("video", "video", t_src=0, t_dst=0),
                                       Connection("action", "video", t_src=0, t_dst=-1)])


def _positive(b, gen):
    """Inputs in the model's domain: strictly positive, (b, N, 16)."""
    return torch.rand(b, N, 16, generator=gen) + 0.5


class LogModel(nn.Module):
    """Takes positive inputs only: ``log`` of anything else is NaN."""

    def __init__(self):
        super().__init__()
        self.attn = CanvasAttention(_topology(), LAYOUT, n_heads=2)

    def forward(self, x):
        return self.attn(x.log())


def test_value_copies_stay_in_make_input_domain():
    torch.manual_seed(0)
    report = verify_structure(LogModel(), make_input=_positive)
    assert report.ok and not report.undeclared
    assert not any("value check skipped" in n for n in report.notes)


def test_value_copies_are_drawn_by_make_input():
    seen = []

    def make(b, gen):
        x = _positive(b, gen)
        seen.append(x)
        return x

    class Guarded(LogModel):
        def forward(self, x):
            # every input the verifier feeds must be made of values make_input drew
            assert bool((x >= 0.5).all()) and bool((x <= 1.5).all()), "an input outside make_input's range"
            return super().forward(x)

    torch.manual_seed(0)
    assert verify_structure(Guarded(), make_input=make).ok
    assert len(seen) > 2  # the gradient probe's draws and the value check's fresh ones


class NanOnRedrawnActions(LogModel):
    """Finite on its probe inputs; without gradients, a batch row whose action inputs differ from row
    0's gives NaN (an input make_input can draw but the model cannot take)."""

    def forward(self, x):
        out = super().forward(x)
        if torch.is_grad_enabled() or x.shape[0] < 2:
            return out
        act = x[:, ACTION]
        differs = (act != act[:1]).flatten(1).any(1)
        return torch.where(differs[:, None, None], torch.full_like(out, float("nan")), out)


def test_a_non_finite_copy_skips_its_group_with_a_note():
    torch.manual_seed(0)
    report = verify_structure(NanOnRedrawnActions(), make_input=_positive)
    assert report.ok and not report.undeclared
    notes = [n for n in report.notes if "value check skipped" in n and "NaN or infinite" in n]
    assert notes and "'action'" in notes[0] and "make_input" in notes[0]


# --- transfer_distance on an embedding without direction ---------------------------------------------
def test_zero_embedding_names_the_argument_and_the_fix():
    arm = RegionSpec((0, 1), semantic_type="arm", semantic_embedding=(0.0, 1.0))
    zero = RegionSpec((0, 2), semantic_embedding=(0.0, -0.0))
    with pytest.raises(SchemaError, match=r"second argument \(b\).*bounds \(0, 2\).*zero vector") as exc:
        transfer_distance(arm, zero)
    assert "canvas embed" in str(exc.value) and "unset" in str(exc.value)
    named = RegionSpec((0, 1), semantic_type="gripper", semantic_embedding=(0.0, 0.0))
    with pytest.raises(SchemaError, match=r"first argument \(a\).*'gripper'.*zero vector"):
        transfer_distance(named, arm)


def test_empty_embedding_is_called_empty():
    a = RegionSpec((0, 1), semantic_type="arm", semantic_embedding=())
    b = RegionSpec((0, 1), semantic_type="cam", semantic_embedding=())
    with pytest.raises(SchemaError, match=r"first argument \(a\).*'arm'.*is empty") as exc:
        transfer_distance(a, b)
    assert "zero vector" not in str(exc.value) and "canvas embed" in str(exc.value)
