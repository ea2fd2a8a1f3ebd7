"""verify_structure on models whose output is not one floating (B, N, D) tensor: every per-position
item of a tuple / list output is probed as its own part (a leak in item 1 is no longer hidden behind
item 0), other items are named in a note, and an integer or bool output is refused by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core import verify_structure
from canvas_core.errors import CanvasTypeError

torch.set_num_threads(1)


def _layer() -> cc.CanvasAttention:
    layout = cc.CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
    topology = cc.CanvasTopology(connections=[cc.Connection("a", "b", t_src=0, t_dst=0)])
    torch.manual_seed(0)
    return cc.CanvasAttention(topology, layout, n_heads=2)


class _Out(nn.Module):
    """Runs one canvas layer and returns ``shape(layer(x), x)``."""

    def __init__(self, shape) -> None:
        super().__init__()
        self.layer, self.shape = _layer(), shape

    def forward(self, x: torch.Tensor):
        return self.shape(self.layer(x), x)


def test_a_leak_in_the_second_item_of_a_tuple_is_reported_naming_the_item():
    report = verify_structure(_Out(lambda y, x: (y, x.flip(1))))  # item 1 reads every later frame
    assert not report.ok and report.future_reads
    assert report.parts == ["model output[0]", "model output[1]"]
    assert {d.where for d in report.undeclared} == {"model output[1]"}
    assert "model output[1]: region" in str(report)


def test_a_list_output_is_probed_item_by_item_too():
    report = verify_structure(_Out(lambda y, x: [x.flip(1), y]))
    assert not report.ok
    assert {d.where for d in report.undeclared} == {"model output[0]"}


def test_a_detached_leak_in_a_tuple_item_is_found_by_value():
    report = verify_structure(_Out(lambda y, x: (y, y + x.flip(1).detach())))
    leaks = [d for d in report.undeclared if d.where == "model output[1]"]
    assert not report.ok and leaks and all(d.by == "value" for d in leaks)


def test_a_tuple_of_clean_items_verifies_and_items_that_are_not_per_position_are_noted():
    report = verify_structure(_Out(lambda y, x: (y, 2 * y, y.pow(2).mean(), "aux")))
    assert report.ok, str(report)
    assert report.parts == ["model output[0]", "model output[1]"]
    notes = " ".join(report.notes)
    assert "model output[2] NOT PROBED: a shape ()" in notes and "model output[3] NOT PROBED: a str" in notes


def test_a_tuple_without_any_per_position_tensor_is_refused():
    with pytest.raises(CanvasTypeError, match=r"tuple of 2 item\(s\), none a floating \(B, 8, D\) tensor"):
        verify_structure(_Out(lambda y, x: (y.sum(), None)))


@pytest.mark.parametrize("dtype", [torch.long, torch.bool])
def test_an_integer_or_bool_output_is_refused_naming_its_dtype_and_the_fix(dtype):
    with pytest.raises(CanvasTypeError) as info:
        verify_structure(_Out(lambda y, x: (y > 0).to(dtype)))
    msg = str(info.value)
    assert f"_Out(x)'s output is a {dtype} tensor" in msg and "last floating output" in msg, msg


@pytest.mark.parametrize("extra", [lambda y: torch.ones(y.shape[:2], dtype=torch.bool), lambda y: y.argmax(-1),
                                   lambda y: (y > 0).long()])
def test_an_integer_or_bool_item_of_a_tuple_is_noted_not_probed_and_the_rest_verifies(extra):
    """A padding mask or an argmax next to the output: noted, and a tuple whose only probed item is
    the first keeps the part name "model" (as before items were probed one by one)."""
    report = verify_structure(_Out(lambda y, x: (y, extra(y))))
    assert report.ok, str(report)
    assert report.parts == ["model"]
    assert "model output[1] NOT PROBED: a torch." in " ".join(report.notes)


def test_a_tuple_of_only_integer_per_position_items_is_refused():
    with pytest.raises(CanvasTypeError, match="none a floating"):
        verify_structure(_Out(lambda y, x: ((y > 0).long(), y.argmax(-1))))
