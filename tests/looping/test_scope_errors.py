"""Bad inputs of the loop scopes: a CanvasError naming the argument and the fix, model unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core
from canvas_core.errors import BackboneError, CanvasError, ShapeError
from canvas_core.looping import LoopedBlockWrapper, graft_looped_blocks

from tests.looping._backbone_setup import inputs, make, run
from tests.looping._scope_setup import make_net

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")


def _untouched(m, x, ref):
    assert not any(isinstance(b, (LoopedBlockWrapper, canvas_core.LoopedSpan)) for b in m.blocks)
    assert "forward" not in m.__dict__ and "canvas_loop" not in m._modules
    with torch.no_grad():
        assert torch.equal(m(x), ref)


@pytest.mark.parametrize("scope, match", [
    ((0, 5), r"scope=\(0, 5\) is outside the model's blocks: the model has 4 blocks"),
    ((-1, 2), "outside the model's blocks"),
    ((2, 2), r"scope=\(2, 2\) is empty.*0 <= i < j <= 4"),
    ((3, 1), r"scope=\(3, 1\) is reversed"),
    ("stak", "unknown scope 'stak'; did you mean 'stack'"),
    ("blocks", "did you mean 'block'"),
    ("everything", r"unknown scope 'everything' Choose 'block', 'stack', 'model' or a span"),
    ((1, 2, 3), "scope must be 'block', 'stack', 'model' or a pair"),
    ((True, 2), "scope must be"),
    (2, "scope must be"),
])
def test_bad_scopes(scope, match):
    m = make_net()
    x = torch.randn(2, 3, 3)
    with torch.no_grad():
        ref = m(x)
    with pytest.raises(BackboneError, match=match):
        graft_looped_blocks(m, scope=scope, latent_channels=3)
    _untouched(m, x, ref)


@pytest.mark.parametrize("kwargs, match", [
    (dict(scope="block", inject="add"), "inject='add' applies to span scopes.*not scope='block'"),
    (dict(scope="model", iter_norm="rms"), "iter_norm='rms' applies to span scopes"),
    (dict(scope="stack", reenter=torch.tanh), "applies to scope='model'"),
    (dict(scope="stack", step_adapter="gated"), "step_adapter='gated' applies to scope='model'"),
    (dict(scope="block", update="damped"), "update='damped' applies to span and model scopes"),
    (dict(scope="stack", inject="mul"), r"inject='mul' is not an injection; choose one of \['none', 'add', 'concat'\]"),
    (dict(scope="stack", update="ema"), "is not an update rule"),
    (dict(scope="stack", update="damped", damping=1.5), r"damping=1.5 must be a number in \(0, 1\]"),
    (dict(scope="stack", damping=0.3), "damping=0.3 is the fixed step of update='damped'.*update='gated' takes no"),
    (dict(scope="block", damping=0.3), "damping=0.3 is the fixed step of update='damped'"),
    (dict(scope="stack", iter_norm="layer"), "is not a norm"),
    (dict(scope="model", reenter=3), "reenter=3 must be None or a callable"),
    (dict(scope="stack", wrapper_class=LoopedBlockWrapper), "wrapper_class"),
    (dict(scope="model", iter_embed=False), "iter_embed=False applies to span scopes"),
])
def test_options_that_do_not_apply_are_refused(kwargs, match):
    m = make_net()
    x = torch.randn(2, 3, 3)
    with torch.no_grad():
        ref = m(x)
    with pytest.raises(CanvasError, match=match):
        graft_looped_blocks(m, latent_channels=3, **kwargs)
    _untouched(m, x, ref)


def test_model_scope_on_a_model_whose_output_cannot_reenter():
    m = make("vit")
    kw = inputs("vit")
    with torch.no_grad():
        ref = run("vit", m, kw)
    with pytest.raises(BackboneError, match=r"scope='model'.*does not live in its input space.*scope='stack'"):
        graft_looped_blocks(m, scope="model")
    assert not any(isinstance(b, LoopedBlockWrapper) for b in m.blocks) and "forward" not in m.__dict__
    with torch.no_grad():
        assert torch.equal(run("vit", m, kw), ref)
    import diffusers

    cfg = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, time_embed_dim=8,
               text_embed_dim=16, num_layers=1, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
               max_text_seq_length=6)
    cog = diffusers.CogVideoXTransformer3DModel(**cfg)
    with pytest.raises(BackboneError, match="reads 4 latent channels and predicts 8"):
        graft_looped_blocks(cog, scope="model")
    assert "forward" not in cog.__dict__ and not hasattr(cog, "canvas_loop")


def test_generic_model_whose_output_has_another_shape_fails_at_forward_naming_the_scope():
    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4)])

        def forward(self, x):
            return self.blocks[0](x).mean(1)

    m = Pool()
    graft_looped_blocks(m, scope="model", latent_channels=4, inner_dim=4)
    x = torch.randn(2, 3, 4)
    with pytest.raises(ShapeError, match=r"output \(2, 4\) differs from its input 'x' \(2, 3, 4\).*span scope"):
        m(x)
    canvas_core.set_loops(m, 1)
    assert m(x).shape == (2, 4)  # one loop is the model itself


@pytest.mark.parametrize("n", [0, -2, 1.5, True, "3", None])
def test_set_loops_needs_a_positive_int(n):
    m = make_net()
    parts, _ = graft_looped_blocks(m, max_loops=3, scope=(1, 2), latent_channels=3)
    canvas_core.set_loops(m, 2, exit_tol=0.1)
    with pytest.raises(BackboneError, match="n .the loop count. must be an int >= 1"):
        canvas_core.set_loops(m, n)
    assert parts[0].current_loops == 2 and parts[0].exit_tol == 0.1


@pytest.mark.parametrize("tol", [-1e-3, float("nan"), float("inf"), "0.1", True])
def test_exit_tol_must_be_a_finite_non_negative_number(tol):
    m = make_net()
    parts, _ = graft_looped_blocks(m, max_loops=3, scope="stack", latent_channels=3)
    with pytest.raises(BackboneError, match="exit_tol must be a finite number >= 0"):
        canvas_core.set_loops(m, 4, exit_tol=tol)
    assert parts[0].current_loops == 3 and parts[0].exit_tol == 0.0


def test_adaptive_exit_needs_a_span_or_model_scope_and_stats_a_forward():
    m = make_net()
    blocks, _ = graft_looped_blocks(m, max_loops=3, latent_channels=3)
    with pytest.raises(BackboneError, match="exit_tol=0.1 needs a span, stack or model scope"):
        canvas_core.set_loops(m, 2, exit_tol=0.1)
    assert all(b.current_loops == 3 for b in blocks)
    with pytest.raises(CanvasError, match="no forward has run yet"):
        canvas_core.loop_counts(m)
    with pytest.raises(BackboneError, match="graft it first"):
        canvas_core.loop_stats(make_net())
    s = make_net()
    graft_looped_blocks(s, scope="stack", latent_channels=3)
    with pytest.raises(CanvasError, match="no forward has run yet"):
        canvas_core.loop_counts(s)


def test_a_second_graft_is_refused():
    for scope in ((1, 3), "model"):
        m = make_net()
        graft_looped_blocks(m, scope=scope, latent_channels=3)
        with pytest.raises(BackboneError, match="already grafted"):
            graft_looped_blocks(m, scope="stack", latent_channels=3)
