"""Every registered attention type trains under CPU autocast (bfloat16), as a mixed-precision
run would use it: a canvas layer's forward and backward run, and the output and gradients are
those of float32 to bfloat16 rounding.  (``rwkv``'s hand-written autograd functions once ran their
products in bfloat16 under autocast and then failed in their backward with a dtype mismatch.)"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import canvas_core.plugins as P  # noqa: E402
from canvas_core.runtime.canvas_attention import CanvasAttention  # noqa: E402
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection  # noqa: E402

TYPES = sorted(P.list_attention_types())


def _layer(fn):
    layout = CanvasLayout(T=3, H=3, W=4, d_model=16, regions={
        "v": (0, 3, 0, 2, 0, 4), "a": (0, 3, 2, 3, 0, 2), "r": (0, 3, 2, 3, 2, 4)})
    topo = CanvasTopology(connections=[
        Connection(src="v", dst="v", t_src=0, t_dst=0),
        Connection(src="a", dst="v", fn=fn, t_src=0, t_dst=0),    # 2 queries read 8 keys per frame
        Connection(src="r", dst="a", fn=fn, t_src=0, t_dst=-1),   # the previous frame
        Connection(src="a", dst="r", fn=fn),                      # every frame: one key set
    ])
    torch.manual_seed(0)
    layer = CanvasAttention(topo, layout, n_heads=2)
    with torch.no_grad():  # open the zero-initialised gates, so every type's part shows
        for name, p in layer.named_parameters():
            if "gate" in name.rsplit(".", 1)[-1] or name.endswith("alpha"):
                p.add_(0.5)
    return layer, layout


def _run(layer, x):
    x = x.detach().clone().requires_grad_()
    out = layer(x)
    grads = torch.autograd.grad(out.float().square().sum(), [x, *layer.parameters()], allow_unused=True)
    return out.float(), grads


@pytest.mark.parametrize("fn", TYPES)
def test_every_type_trains_under_cpu_autocast(fn):
    layer, layout = _layer(fn)
    x = torch.randn(2, layout.num_positions, 16, generator=torch.Generator().manual_seed(1))
    ref, ref_grads = _run(layer, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, grads = _run(layer, x)
    assert torch.isfinite(out).all()
    scale = ref.abs().max().item()
    assert (out - ref).abs().max().item() <= 0.05 * scale + 1e-3, fn
    # against the largest gradient: some are 0 in exact arithmetic (softmax ignores the key bias)
    gscale = max(r.abs().max().item() for r in ref_grads if r is not None)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if g is not None:
            assert torch.isfinite(g).all()
            assert (g - r).abs().max().item() <= 0.05 * gscale, fn


@pytest.mark.filterwarnings("ignore:In CPU autocast")
@pytest.mark.parametrize("fn", TYPES)
def test_every_type_trains_under_cpu_autocast_inside_a_backbone(fn):
    """The same inside a grafted CogVideoX (the type's gated module on the block's hidden states):
    forward and backward run under CPU autocast and the output is float32's to bf16 rounding."""
    pytest.importorskip("diffusers")
    from canvas_core.looping import get_adapter, graft_looped_blocks
    from tests.looping._backbone_setup import inputs, make, run, user_layout

    regions = ("top", "bottom", "extra")
    topo = CanvasTopology(connections=[Connection(a, b) for a in regions for b in regions] + [
        Connection("top", "bottom", fn=fn, t_src=0, t_dst=0), Connection("bottom", "top", fn=fn, t_src=0, t_dst=-1)])
    m, kw = make("cogvideox"), inputs("cogvideox")
    graft_looped_blocks(m, max_loops=1)
    ad = get_adapter(m)
    ad.install_topology(m, topo, user_layout(ad.token_layout(m, kw), 1))
    with torch.no_grad():  # open the branch gates (zero at initialisation), so the type's part shows
        for name, p in m.named_parameters():
            if "canvas_fn" in name and "gate" in name.rsplit(".", 1)[-1]:
                p.fill_(0.5)
    ref = run("cogvideox", m, kw).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run("cogvideox", m, kw)
    out.float().square().mean().backward()
    assert torch.isfinite(out.float()).all()
    assert (out.float() - ref).abs().max().item() <= 0.05 * ref.abs().max().item() + 1e-3
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
