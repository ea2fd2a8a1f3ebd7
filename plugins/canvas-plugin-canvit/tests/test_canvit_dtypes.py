"""CanViT in float64 / half precision: rotary frequencies are not rounded by ``.half()`` and a
float64 model keeps float64 coordinates (gradcheck-exact)."""

import pytest
import torch

from canvas_plugin_canvit.model import CanViTCore
from canvas_plugin_canvit.rope import SceneRoPE
from canvas_plugin_canvit.viewpoint import Viewpoint

torch.set_num_threads(1)


@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
def test_rope_frequencies_survive_a_half_precision_round_trip(dt):
    fresh = SceneRoPE(8)
    back = SceneRoPE(8).to(dt).float()
    assert torch.equal(fresh.freqs, back.freqs)
    x, c = torch.randn(1, 2, 5, 8), torch.rand(1, 5, 2) * 2 - 1
    assert torch.equal(fresh(x, c), back(x, c))


def test_canvit_bf16_round_trip_then_load_state_gives_the_same_output():
    torch.manual_seed(0)
    m = CanViTCore(16, n_heads=2, depth=1, patch_size=4)
    m2 = CanViTCore(16, n_heads=2, depth=1, patch_size=4).bfloat16().float()
    m2.load_state_dict(m.state_dict())
    g, st = torch.randn(1, 3, 8, 8), m.init_state(1, 2)
    vp = Viewpoint(torch.tensor([[0.3, -0.2]]), torch.tensor([0.5]))
    assert torch.equal(m(g, st, vp).local_patches, m2(g, st, vp).local_patches)


def test_float64_canvit_gradcheck_through_the_viewpoint():
    torch.manual_seed(0)
    m = CanViTCore(8, n_heads=2, depth=1, patch_size=2).double()
    g = torch.randn(1, 3, 4, 4, dtype=torch.double)
    st = m.init_state(1, 2)
    c = (torch.rand(1, 2, dtype=torch.double) - 0.5).requires_grad_()
    s = torch.full((1,), 0.5, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda cc: m(g, st, Viewpoint(cc, s)).local_patches, (c,))


def test_float64_canvas_read_gradcheck_through_set_viewpoint():
    from canvas_plugin_canvit.attention import CanvasReadAttention

    torch.manual_seed(0)
    a = CanvasReadAttention(8, n_heads=2).double()
    q, kv = torch.randn(1, 4, 8, dtype=torch.double), torch.randn(1, 4, 8, dtype=torch.double)
    s = torch.full((1,), 0.5, dtype=torch.double)

    def f(cc):
        a.set_viewpoint(Viewpoint(cc, s))
        return a(q, kv, kv)

    c = (torch.rand(1, 2, dtype=torch.double) - 0.5).requires_grad_()
    assert torch.autograd.gradcheck(f, (c,))
