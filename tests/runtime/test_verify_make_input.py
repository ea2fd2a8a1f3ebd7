"""`verify_structure(..., make_input=)`: a canvas layer is probed on the inputs it draws (it was
ignored there), every draw is checked against what the layer or model takes, and a backbone with
an installed topology refuses it (its attention core is probed on its own inputs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core
from canvas_core.errors import CanvasTypeError, ShapeError
from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

LAYOUT = CanvasLayout(T=3, H=2, W=2, d_model=16, regions={"cam": (0, 3, 0, 1, 0, 2), "act": (0, 3, 1, 2, 0, 2)})
TOPO = CanvasTopology(connections=[Connection("cam", "cam", t_src=0, t_dst=0),
                                   Connection("act", "cam", t_src=0, t_dst=-1)])


def _layer():
    torch.manual_seed(0)
    return CanvasAttention(TOPO, LAYOUT, n_heads=2)


def test_a_layer_is_probed_on_the_inputs_make_input_draws():
    sizes = []

    def make(b, gen):
        sizes.append(b)
        return 3.0 * torch.randn(b, 12, 16, generator=gen)

    report = canvas_core.verify_structure(_layer(), make_input=make)
    assert report.ok and report.parts == ["layer"]
    assert sizes and set(sizes) <= {1, 2, 12}  # probe inputs, the batch-mixing check


@pytest.mark.parametrize("shape", [(5, 16), (12, 8), (12,)])
def test_a_layer_refuses_inputs_of_another_shape(shape):
    with pytest.raises(ShapeError, match=r"make_input\(1, generator\) returned shape .*takes \(1, 12, 16\)"):
        canvas_core.verify_structure(_layer(), make_input=lambda b, g: torch.randn((b,) + shape, generator=g))


def test_a_layer_refuses_inputs_of_another_dtype_or_no_tensor():
    with pytest.raises(CanvasTypeError, match="float64 tensor on cpu.*torch.float32"):
        canvas_core.verify_structure(_layer(), make_input=lambda b, g: torch.randn(b, 12, 16, dtype=torch.float64))
    with pytest.raises(CanvasTypeError, match="returned NoneType"):
        canvas_core.verify_structure(_layer(), make_input=lambda b, g: None)
    with pytest.raises(CanvasTypeError, match="make_input must be callable"):
        canvas_core.verify_structure(_layer(), make_input=torch.randn(1, 12, 16))


def test_a_model_gets_the_same_check():
    model = nn.Sequential(_layer(), nn.Linear(16, 16))
    with pytest.raises(ShapeError, match=r"returned shape \(1, 5, 16\); Sequential takes \(1, 12, D\)"):
        canvas_core.verify_structure(model, make_input=lambda b, g: torch.randn(b, 5, 16, generator=g))
    assert canvas_core.verify_structure(model, make_input=lambda b, g: torch.randn(b, 12, 16, generator=g)).ok


def test_a_backbone_with_an_installed_topology_refuses_make_input():
    pytest.importorskip("diffusers")
    from canvas_core.looping import get_adapter, graft_looped_blocks
    from tests.looping._backbone_setup import inputs, make

    model = make("cogvideox")
    graft_looped_blocks(model, max_loops=2)
    ad = get_adapter(model)
    ad.install_topology(model, CanvasTopology(connections=[Connection("video", "video"), Connection("video", "text"),
                                                           Connection("text", "text")]),
                        ad.token_layout(model, inputs("cogvideox")))
    with pytest.raises(CanvasTypeError, match="make_input does not apply to .*installed topology"):
        canvas_core.verify_structure(model, make_input=lambda b, g: torch.randn(b, 4, 16, generator=g))
