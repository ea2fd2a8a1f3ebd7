"""Frame-by-frame rollout (``canvas_core.incremental``) equals the full forward, frame by frame.

The reference is the model itself run on the whole canvas: for a causal topology, rolling out
frame ``t`` must give ``model(x)[:, frame t]``, for every builtin type (and the mamba plugin's),
periods, fills, regions that start late or stop early, overlapping regions and 2-4 layers.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import canvas_core
from canvas_core.errors import CanvasError, ShapeError, TopologyError
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec
import canvas_ref_strategies as gen  # registered by tests/conftest.py
from tests.runtime._rollout_models import TYPES, build_model, causal_only, frames

TOL = 1e-7  # float64; the reference kernels carry log w in float32


def _check_rollout(model, layout, x):
    V = x.shape[1] // layout.T
    with torch.no_grad():
        full = model(x)
        with canvas_core.incremental(model, layout) as roll:
            for t, (x_t, want) in enumerate(zip(frames(x, V), frames(full, V))):
                got = roll.step(x_t)
                assert got.shape == want.shape
                assert torch.allclose(got, want, atol=TOL, rtol=0), (t, (got - want).abs().max().item())


def _interleaved_layout(T=4):
    """Regions that interleave in canonical order (so key order matters), a late one, a slow one."""
    return CanvasLayout(T=T, H=3, W=4, d_model=4, regions={
        "a": (0, T, 0, 2, 0, 2), "b": (0, T, 0, 2, 2, 4),
        "late": (1, T, 2, 3, 0, 2), "slow": RegionSpec((0, (T + 1) // 2, 2, 3, 2, 4), period=2)})


def _fixed_topology(fn):
    C = Connection
    return CanvasTopology(connections=[
        C(src="a", dst="a", t_src=0, t_dst=0, fn=fn), C(src="a", dst="b", t_src=0, t_dst=-1, fn=fn),
        C(src="b", dst="a", t_src=0, t_dst=0, fn=fn, weight=0.5), C(src="b", dst="b", t_src=0, t_dst=0, fn=fn),
        C(src="late", dst="a", t_src=0, t_dst=-1, fn=fn), C(src="late", dst="slow", fn=fn, t_src=0, t_dst=0),
        C(src="a", dst="slow", t_src=0, t_dst=0, fn=fn, temporal_fill="hold"),
        C(src="late", dst="slow", t_src=0, t_dst=-1, fn=fn, temporal_fill="drop"),
        C(src="slow", dst="slow", t_src=0, t_dst=-1, fn=fn),
        C(src="b", dst="slow", t_src=0, t_dst=-1, fn=fn, temporal_fill="interpolate"),
    ])


@pytest.mark.parametrize("fn", TYPES)
def test_every_type_rolls_out_exactly(fn):
    layout = _interleaved_layout()
    topo = CanvasTopology(connections=causal_only(_fixed_topology(fn).connections, layout))
    assert len(topo.connections) >= 7
    model = build_model(topo, layout, depth=2)
    x = torch.randn(2, layout.T * 12, 4, dtype=torch.float64)
    _check_rollout(model, layout, x)


@st.composite
def _case(draw):
    layout = draw(gen.layouts(max_T=4, max_side=3, max_regions=3))
    conns = draw(gen.topologies(layout, fns=TYPES, max_conns=6)).connections
    # causal by construction for most draws: read the same or an earlier frame
    conns = [c if draw(st.booleans()) else
             Connection(src=c.src, dst=c.dst, weight=c.weight, fn=c.fn, t_src=0,
                        t_dst=-draw(st.integers(0, 2)), temporal_fill=c.temporal_fill)
             for c in conns]
    kept = causal_only(conns, layout)
    if not kept:  # a static self-link of every region to frame 0 reads nothing later
        kept = [Connection(src=r, dst=r, t_src=0, t_dst=0, fn=draw(st.sampled_from(TYPES))) for r in layout.regions]
    return layout, CanvasTopology(connections=kept), draw(st.integers(2, 4)), draw(st.integers(0, 2 ** 16))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_case())
@pytest.mark.filterwarnings("ignore:connection .* links nothing")
def test_random_causal_topologies_roll_out_exactly(case):
    layout, topo, depth, seed = case
    model = build_model(topo, layout, depth=depth, seed=seed)
    g = torch.Generator().manual_seed(seed)
    N = layout.T * (len(layout.spatial_shape) and int(torch.tensor(layout.spatial_shape).prod()))
    x = torch.randn(1, N, 4, dtype=torch.float64, generator=g)
    _check_rollout(model, layout, x)


def _model_and_input(T=4):
    layout = _interleaved_layout(T)
    topo = CanvasTopology(connections=causal_only(_fixed_topology("cross_attention").connections, layout))
    return layout, build_model(topo, layout, depth=2), torch.randn(2, T * 12, 4, dtype=torch.float64)


def test_a_topology_reading_a_later_frame_is_refused_before_anything_runs():
    layout = _interleaved_layout()
    topo = CanvasTopology(connections=[Connection(src="a", dst="a", t_src=0, t_dst=0),
                                       Connection(src="b", dst="a", t_src=0, t_dst=1, fn="rwkv")])
    model = build_model(topo, layout, depth=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TopologyError, match=r"connection #1 \('b' -> 'a', fn 'rwkv'.*later frame"):
        canvas_core.incremental(model, layout)
    assert all("_updates" not in m.__dict__ for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_steps_are_refused_and_leave_the_cache_unchanged():
    layout, model, x = _model_and_input()
    V = 12
    with torch.no_grad():
        full = model(x)
        with canvas_core.incremental(model, layout) as roll:
            roll.step(x[:, :V])
            for bad in (x[:, :V - 1], torch.zeros(2, V, 5, dtype=torch.float64), x[:1, :V], x[:, :V].float()):
                with pytest.raises(ShapeError, match=r"x_t|batch"):
                    roll.step(bad)
                assert roll.frame == 1
            with pytest.raises(CanvasError):
                roll.step("frame")
            for t in range(1, layout.T):
                assert torch.allclose(roll.step(x[:, t * V:(t + 1) * V]), full[:, t * V:(t + 1) * V], atol=TOL)
            with pytest.raises(canvas_core.RolloutError, match="slide='recompute'"):
                roll.step(x[:, :V])
            assert roll.frame == layout.T


def test_a_step_that_fails_inside_the_model_changes_nothing():
    layout, model, x = _model_and_input()
    V = 12
    boom = {"on": False, "error": RuntimeError("boom")}

    def hook(module, args, out):
        if boom["on"]:
            raise boom["error"]

    model[1].mlp.register_forward_hook(hook)
    with torch.no_grad():
        full = model(x)
        with canvas_core.incremental(model, layout) as roll:
            for t in range(layout.T):
                boom["on"] = True
                with pytest.raises(canvas_core.RolloutError, match=f"failed on frame {t}.*boom"):
                    roll.step(x[:, t * V:(t + 1) * V] + 3.0)  # written into the slot, never committed
                boom["error"] = torch.OutOfMemoryError("out of memory")  # not relabelled: passes as it is
                with pytest.raises(torch.OutOfMemoryError):
                    roll.step(x[:, t * V:(t + 1) * V])
                boom.update(on=False, error=RuntimeError("boom"))
                assert roll.frame == t
                assert torch.allclose(roll.step(x[:, t * V:(t + 1) * V]), full[:, t * V:(t + 1) * V], atol=TOL)


def test_slide_recompute_equals_the_full_forward_on_the_window():
    layout, model, x = _model_and_input(T=3)
    V = 12
    extra = torch.randn(2, 3 * V, 4, dtype=torch.float64)
    stream = frames(x, V) + frames(extra, V)
    with torch.no_grad(), canvas_core.incremental(model, layout, slide="recompute") as roll:
        for s, x_t in enumerate(stream):
            got = roll.step(x_t)
            window = torch.cat(stream[max(0, s - 2):s + 1], dim=1)
            if window.shape[1] < 3 * V:
                continue
            assert torch.allclose(got, model.__class__.forward(model, window)[:, -V:], atol=TOL)
        assert roll.steps == 6 and roll.frame == 3


def test_the_model_is_unchanged_after_the_rollout_and_loops_are_supported():
    layout, model, x = _model_and_input()
    V = 12
    blocks = list(model)

    class Looped(torch.nn.Module):  # the same canvas block applied twice per forward
        def __init__(self):
            super().__init__()
            self.block, self.head = blocks[0], blocks[-1]

        def forward(self, z):
            return self.head(self.block(self.block(z)))

    looped = Looped()
    with torch.no_grad():
        full = looped(x)
        with canvas_core.incremental(looped, layout) as roll:
            for t in range(layout.T):
                assert torch.allclose(roll.step(x[:, t * V:(t + 1) * V]), full[:, t * V:(t + 1) * V], atol=TOL)
        assert all("_updates" not in m.__dict__ for m in looped.modules())
        assert torch.equal(looped(x), full)


def test_bad_arguments_are_canvas_errors():
    layout, model, _ = _model_and_input()
    with pytest.raises(CanvasError, match="no CanvasAttention"):
        canvas_core.incremental(torch.nn.Linear(4, 4), layout)
    with pytest.raises(CanvasError, match="slide"):
        canvas_core.incremental(model, layout, slide="reuse")
    other = CanvasLayout(T=5, H=3, W=4, d_model=4, regions={"a": (0, 5, 0, 3, 0, 4)})
    with pytest.raises(ShapeError, match="layout"):
        canvas_core.incremental(model, other)
    roll = canvas_core.incremental(model, layout)
    with pytest.raises(canvas_core.RolloutError, match="with canvas_core.incremental"):
        roll.step(torch.zeros(1, 12, 4, dtype=torch.float64))


def test_frames_with_many_distinct_rows_take_the_masked_path(monkeypatch):
    from canvas_core.runtime import rollout_plan

    monkeypatch.setattr(rollout_plan, "CLASS_LIMIT", 0)  # every frame: one masked attention
    layout = _interleaved_layout()
    conns = causal_only(_fixed_topology("cross_attention").connections + _fixed_topology("rwkv").connections, layout)
    model = build_model(CanvasTopology(connections=conns), layout, depth=2)
    _check_rollout(model, layout, torch.randn(1, layout.T * 12, 4, dtype=torch.float64))


@pytest.mark.parametrize("residual", ["delta", "returns_delta"])
def test_residual_stacks_on_the_layer_change_roll_out(residual):
    layout = _interleaved_layout()
    conns = causal_only(_fixed_topology("cross_attention").connections + _fixed_topology("hyena").connections, layout)
    model = build_model(CanvasTopology(connections=conns), layout, depth=3, residual=residual)
    _check_rollout(model, layout, torch.randn(2, layout.T * 12, 4, dtype=torch.float64))


def test_an_attention_dispatcher_rolls_out():
    layout = _interleaved_layout()
    topo = CanvasTopology(connections=causal_only(_fixed_topology("perceiver").connections, layout))
    torch.manual_seed(0)
    model = torch.nn.Sequential(canvas_core.AttentionDispatcher(topo, layout, 4, 2),
                                canvas_core.AttentionDispatcher(topo, layout, 4, 2)).double().eval()
    _check_rollout(model, layout, torch.randn(1, layout.T * 12, 4, dtype=torch.float64))


def test_a_model_that_is_not_position_wise_is_named():
    layout, model, x = _model_and_input()
    model.append(torch.nn.Unflatten(1, (layout.T, 12)))  # needs the whole canvas
    with pytest.raises(canvas_core.RolloutError, match="position by position"):
        with torch.no_grad(), canvas_core.incremental(model, layout) as roll:
            roll.step(x[:, :12])


def _rollout_gradient_equals_the_full_forwards(model, layout):
    """The input gradient of the last frame's output: through the rollout as through one forward."""
    x = torch.randn(1, layout.T * 12, 4, dtype=torch.float64, requires_grad=True)
    want = torch.autograd.grad(model(x)[:, -12:].sum(), x)[0]
    with canvas_core.incremental(model, layout) as roll:
        ys = [roll.step(x[:, t * 12:(t + 1) * 12]) for t in range(layout.T)]
    got = torch.autograd.grad(ys[-1].sum(), x)[0]
    assert torch.allclose(got, want, atol=TOL)


def test_gradients_flow_through_the_rollout():
    layout, model, _ = _model_and_input()
    _rollout_gradient_equals_the_full_forwards(model, layout)


def test_prepare_builds_every_frame_up_front():
    layout, model, x = _model_and_input()
    with torch.no_grad():
        full = model(x)
        with canvas_core.incremental(model, layout) as roll:
            assert roll.prepare() is roll
            for t in range(layout.T):
                assert torch.allclose(roll.step(x[:, t * 12:(t + 1) * 12]), full[:, t * 12:(t + 1) * 12], atol=TOL)


def test_a_rollout_can_be_entered_again_and_starts_afresh():
    layout, model, x = _model_and_input()
    roll = canvas_core.incremental(model, layout)
    with torch.no_grad():
        full = model(x)
        for _ in range(2):
            with roll:
                assert roll.frame == 0
                for t in range(2):
                    assert torch.allclose(roll.step(x[:, t * 12:(t + 1) * 12]), full[:, t * 12:(t + 1) * 12], atol=TOL)
            assert all("_updates" not in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("fn", ["cross_attention", "rwkv", "copy", "perceiver"])
def test_masked_connections_roll_out(fn):
    from canvas_core import MaskSpec

    layout = CanvasLayout(T=3, H=4, W=4, d_model=4, regions={"v": (0, 3, 0, 4, 0, 4)})
    tiles = MaskSpec(kind="tile", tile_h=2, tile_w=2)
    topo = CanvasTopology(connections=[
        Connection(src="v", dst="v", t_src=0, t_dst=0, fn=fn, mask=tiles),
        Connection(src="v", dst="v", t_src=0, t_dst=-1, fn=fn, mask=tiles, weight=0.5)])
    model = build_model(topo, layout, depth=2)
    _check_rollout(model, layout, torch.randn(1, 3 * 16, 4, dtype=torch.float64))


def test_reset_starts_a_new_episode_with_another_batch_and_dtype():
    layout, model, x = _model_and_input()
    with torch.no_grad():
        with canvas_core.incremental(model, layout) as roll:
            for t in range(layout.T):
                roll.step(x[:, t * 12:(t + 1) * 12] * 2.0)
            roll.reset()
            x1 = x[:1]
            full = model(x1)
            for t in range(layout.T):
                assert torch.allclose(roll.step(x1[:, t * 12:(t + 1) * 12]), full[:, t * 12:(t + 1) * 12], atol=TOL)
            roll.reset()
            model.float()
            xf = x.float()
            full = model(xf)
            for t in range(layout.T):
                assert torch.allclose(roll.step(xf[:, t * 12:(t + 1) * 12]), full[:, t * 12:(t + 1) * 12], atol=1e-4)


@pytest.mark.parametrize("how", ["whole", "blocks"])
def test_a_compiled_model_rolls_out_exactly(how):
    """A model given to ``torch.compile`` (whole, ``fullgraph=True``, or block by block) rolls out
    (its steps run eagerly: a step's per-frame plans branch on tensor values), and runs compiled
    on whole canvases before and after."""
    if not hasattr(torch.compiler, "set_stance"):
        pytest.skip(f"torch {torch.__version__} has no torch.compiler.set_stance (2.6+): compiled rollouts need it")
    layout, model, x = _model_and_input()
    torch._dynamo.reset()
    if how == "whole":
        run = torch.compile(model, backend="eager", fullgraph=True)
    else:
        for i, block in enumerate(model):
            model[i] = torch.compile(block, backend="eager", fullgraph=True)
        run = model
    V = 12
    with torch.no_grad():
        full = run(x)
        with canvas_core.incremental(run, layout) as roll:
            for x_t, want in zip(frames(x, V), frames(full, V)):
                got = roll.step(x_t)
                assert torch.allclose(got, want, atol=TOL, rtol=0), (got - want).abs().max().item()
        assert torch.allclose(run(x), full, atol=TOL, rtol=0)


@pytest.mark.parametrize("scope", ["block", "stack"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradients_flow_through_the_rollout_of_a_grafted_model(scope, mode):
    """Looped blocks recompute their activations in backward (per-loop gradient checkpointing);
    that recomputation runs after the step, so steps run without it: the rollout's gradients
    equal the full forward's, in training mode and for a model grafted in eval mode (the graft
    keeps the model's mode)."""
    from canvas_core.looping import graft_looped_blocks

    layout, _, _ = _model_and_input()
    topo = CanvasTopology(connections=causal_only(_fixed_topology("cross_attention").connections, layout))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(build_model(topo, layout, depth=2)[:2])
            self.d_model = 4

        def forward(self, z):
            for b in self.blocks:
                z = b(z)
            return z

    torch.manual_seed(0)
    model = Net().double()
    getattr(model, mode)()
    graft_looped_blocks(model, max_loops=2, scope=scope, latent_channels=4, freeze="none", gate_init_bias=0.5)
    assert all(m.training == (mode == "train") for m in model.modules())
    _rollout_gradient_equals_the_full_forwards(model, layout)
    assert all(m.use_gradient_checkpointing for m in model.modules() if hasattr(m, "use_gradient_checkpointing"))


def test_a_users_checkpoint_around_canvas_layers_is_named_in_backward():
    """torch.utils.checkpoint recomputes a block in backward, after the step, with one frame: inside
    the rollout the error says so (not a shape error blaming the input)."""
    from torch.utils.checkpoint import checkpoint

    layout, model, _ = _model_and_input()

    class Checkpointed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, z):
            return checkpoint(self.inner, z, use_reentrant=False)

    m = Checkpointed()
    x = torch.randn(1, layout.T * 12, 4, dtype=torch.float64, requires_grad=True)
    from canvas_core.runtime.incremental import RolloutError

    with canvas_core.incremental(m, layout) as roll:
        y = roll.step(x[:, :12])
        with pytest.raises(RolloutError, match="outside roll.step.*checkpoint"):
            y.sum().backward()
