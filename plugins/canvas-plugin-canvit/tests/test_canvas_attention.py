"""canvas_read / canvas_write against references written here; RoPE equivariance; masks; registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from canvas_core.errors import CanvasError
from canvas_plugin_canvit.attention import CanvasReadAttention, CanvasWriteAttention
from canvas_plugin_canvit.viewpoint import Viewpoint, grid_coords, viewpoint_coords


def _rotate(x, coords, max_freq=64.0):
    """Reference RoPE for one head: x (N, dh), coords (N, 2) -> (N, dh), pair by pair."""
    N, dh = x.shape
    r = 4 * (dh // 4)
    n = r // 4
    out = x.clone()
    for i in range(r // 2):
        axis, k = (0, i) if i < n else (1, i - n)
        freq = (math.pi / 2) * max_freq ** (k / max(n - 1, 1))
        ang = coords[:, axis] * freq
        a, b = x[:, i], x[:, i + r // 2]
        out[:, i] = a * torch.cos(ang) - b * torch.sin(ang)
        out[:, i + r // 2] = a * torch.sin(ang) + b * torch.cos(ang)
    return out


def _ref_read(m, local, canvas, qc, kc, mask=None):
    B, Nq, _ = local.shape
    H, dh = m.n_heads, m.head_dim
    out = torch.zeros(B, Nq, m.d_model)
    for b in range(B):
        q = local[b] @ m.q_proj.weight.T + m.q_proj.bias
        k = F.layer_norm(canvas[b], (m.canvas_dim,))
        heads = []
        for h in range(H):
            s = slice(h * dh, (h + 1) * dh)
            logits = _rotate(q[:, s], qc[b]) @ _rotate(k[:, s], kc[b]).T / math.sqrt(dh)
            if mask is not None:
                logits = logits.masked_fill(~mask[b], float("-inf"))
            w = torch.nan_to_num(torch.softmax(logits, -1))
            heads.append(w @ canvas[b][:, s])
        out[b] = torch.cat(heads, -1) @ m.out_proj.weight.T + m.out_proj.bias
        if mask is not None:
            out[b] = out[b] * mask[b].any(-1, keepdim=True)
    return out


def _ref_write(m, canvas, local, qc, kc):
    B, Nq, _ = canvas.shape
    H, dh = m.n_heads, m.head_dim
    out = torch.zeros(B, Nq, m.d_model)
    for b in range(B):
        q = F.layer_norm(canvas[b], (m.d_model,))
        k = local[b] @ m.k_proj.weight.T + m.k_proj.bias
        v = local[b] @ m.v_proj.weight.T + m.v_proj.bias
        heads = []
        for h in range(H):
            s = slice(h * dh, (h + 1) * dh)
            w = torch.softmax(_rotate(q[:, s], qc[b]) @ _rotate(k[:, s], kc[b]).T / math.sqrt(dh), -1)
            heads.append(w @ v[:, s])
        out[b] = torch.cat(heads, -1)
    return out


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 2), Nq=st.integers(1, 6), G=st.integers(1, 4), local=st.sampled_from([8, 16]),
       canvas=st.sampled_from([8, 24]), H=st.sampled_from([1, 2]), seed=st.integers(0, 9999))
def test_read_matches_reference_with_different_widths(B, Nq, G, local, canvas, H, seed):
    torch.manual_seed(seed)
    m = CanvasReadAttention(local, H, canvas_dim=canvas)
    x, c = torch.randn(B, Nq, local), torch.randn(B, G * G, canvas)
    qc, kc = torch.rand(B, Nq, 2) * 2 - 1, grid_coords(G, G).expand(B, -1, -1)
    mask = torch.rand(B, Nq, G * G) > 0.3
    with torch.no_grad():
        torch.testing.assert_close(m(x, c, c, q_coords=qc, k_coords=kc), _ref_read(m, x, c, qc, kc),
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(m(x, c, c, key_mask=mask, q_coords=qc, k_coords=kc),
                                   _ref_read(m, x, c, qc, kc, mask), atol=1e-5, rtol=1e-4)
    assert m(x, c, c).shape == (B, Nq, local)


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 2), Nl=st.integers(1, 6), G=st.integers(1, 4), local=st.sampled_from([8, 12]),
       canvas=st.sampled_from([8, 16]), seed=st.integers(0, 9999))
def test_write_matches_reference_and_gate_is_convex(B, Nl, G, local, canvas, seed):
    torch.manual_seed(seed)
    m = CanvasWriteAttention(canvas, 2, local_dim=local)
    gated = CanvasWriteAttention(canvas, 2, local_dim=local, gate=True)
    gated.load_state_dict({**m.state_dict(), "gate_logit": torch.randn(canvas)})
    c, x = torch.randn(B, G * G, canvas), torch.randn(B, Nl, local)
    qc, kc = grid_coords(G, G).expand(B, -1, -1), torch.rand(B, Nl, 2) * 2 - 1
    with torch.no_grad():
        upd = m(c, x, x, q_coords=qc, k_coords=kc)
        torch.testing.assert_close(upd, _ref_write(m, c, x, qc, kc), atol=1e-5, rtol=1e-4)
        g = torch.sigmoid(gated.gate_logit)
        torch.testing.assert_close(gated(c, x, x, q_coords=qc, k_coords=kc), (1 - g) * c + g * upd)


@pytest.mark.parametrize("cls", [CanvasReadAttention, CanvasWriteAttention])
def test_translating_all_positions_leaves_the_output_unchanged(cls):
    torch.manual_seed(0)
    m = cls(16, 2)
    q, k = torch.randn(2, 9, 16), torch.randn(2, 16, 16)
    qc, kc = torch.rand(2, 9, 2) * 2 - 1, grid_coords(4, 4).expand(2, -1, -1)
    delta = torch.tensor([[0.37, -0.81]])
    with torch.no_grad():
        base = m(q, k, k, q_coords=qc, k_coords=kc)
        torch.testing.assert_close(m(q, k, k, q_coords=qc + delta, k_coords=kc + delta), base,
                                   atol=2e-5, rtol=1e-4)
        moved = m(q, k, k, q_coords=qc + delta, k_coords=kc)  # only one side moves: output changes
    assert (moved - base).abs().max() > 1e-3


def test_moving_the_viewpoint_and_the_canvas_together_is_equivariant():
    torch.manual_seed(1)
    read = CanvasReadAttention(16, 2, canvas_dim=24)
    local, canvas = torch.randn(2, 16, 16), torch.randn(2, 64, 24)
    vp = Viewpoint(torch.tensor([[-0.3, 0.2], [0.1, 0.4]]), torch.tensor([0.5, 0.25]))
    delta = torch.tensor([0.25, -0.5])
    kc = grid_coords(8, 8)[None]
    with torch.no_grad():
        read.set_viewpoint(vp)
        a = read(local, canvas, canvas, k_coords=kc)
        torch.testing.assert_close(a, read(local, canvas, canvas, q_coords=viewpoint_coords(vp, 4, 4), k_coords=kc))
        read.set_viewpoint(vp.shifted(delta))
        b = read(local, canvas, canvas, k_coords=kc + delta)
        c = read(local, canvas, canvas, k_coords=kc)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert (a - c).abs().max() > 1e-3


def test_default_positions_are_the_full_scene_grid():
    torch.manual_seed(2)
    m = CanvasReadAttention(16, 2)
    x, c = torch.randn(1, 16, 16), torch.randn(1, 9, 16)
    with torch.no_grad():
        got = m(x, c, c)
        torch.testing.assert_close(got, m(x, c, c, q_coords=grid_coords(4, 4)[None], k_coords=grid_coords(3, 3)[None]))
        m.set_viewpoint(Viewpoint.full_scene(1))
        torch.testing.assert_close(m(x, c, c), got)


def test_empty_key_sets_give_zeros():
    m, w = CanvasReadAttention(8, 2), CanvasWriteAttention(8, 2)
    q = torch.randn(2, 3, 8)
    assert (m(q, torch.randn(2, 0, 8), torch.randn(2, 0, 8)) == 0).all()
    assert (w(q, torch.randn(2, 0, 8), torch.randn(2, 0, 8)) == 0).all()
    none = torch.zeros(3, 4, dtype=torch.bool)
    kv = torch.randn(2, 4, 8)
    assert (m(q, kv, kv, key_mask=none) == 0).all()
    gated = CanvasWriteAttention(8, 2, gate=True)
    torch.testing.assert_close(gated(q, kv, kv, key_mask=none), q)  # a gated canvas token stays


@pytest.mark.parametrize("call", [
    lambda: CanvasReadAttention(16, 3, canvas_dim=16),
    lambda: CanvasReadAttention(16, 2, canvas_dim=0),
    lambda: CanvasReadAttention(16, 2)(torch.randn(1, 4, 16), torch.randn(1, 4, 8), torch.randn(1, 4, 8)),
    lambda: CanvasReadAttention(16, 2)(torch.randn(1, 4, 16), torch.randn(1, 4, 16), torch.randn(1, 4, 16),
                                       q_coords=torch.zeros(1, 3, 2)),
    lambda: CanvasWriteAttention(16, 2)(torch.randn(1, 4, 16), torch.randn(1, 4, 16), torch.randn(1, 4, 16),
                                        key_mask=torch.ones(5, 5, dtype=torch.bool)),
    lambda: CanvasWriteAttention(16, 2).set_viewpoint("center"),
    lambda: Viewpoint(torch.zeros(2, 3), torch.ones(2)),
])
def test_bad_inputs_raise_canvas_errors(call):
    with pytest.raises(CanvasError):
        call()


@pytest.mark.parametrize("call, words", [
    # an unknown kernel name used to be accepted and silently ignored
    (lambda: CanvasReadAttention(16, 2, kernel="flex_canvas"), ("canvas_read", "flex_canvas", "auto")),
    (lambda: CanvasWriteAttention(16, 2, kernel="nope"), ("canvas_write", "nope", "auto")),
    (lambda: CanvasReadAttention(16, 2, rope="yes"), ("canvas_read", "rope")),
    (lambda: CanvasWriteAttention(16, 2).set_viewpoint(Viewpoint.full_scene(2), local_grid=(4, 0)),
     ("canvas_write", "local_grid")),
    # a delta of the wrong shape used to raise torch's bare RuntimeError
    (lambda: Viewpoint.full_scene(2).shifted(torch.zeros(3)), ("Viewpoint.shifted", "(2,)", "(3,)")),
])
def test_bad_options_name_the_object_and_the_fix(call, words):
    with pytest.raises(CanvasError) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_viewpoint_batch_must_match_the_local_tokens():
    m = CanvasReadAttention(16, 2, canvas_dim=16)
    local, canvas = torch.randn(2, 4, 16), torch.randn(2, 9, 16)
    m.set_viewpoint(Viewpoint.full_scene(3), local_grid=(2, 2))
    with pytest.raises(CanvasError, match="set_viewpoint.*batch size 3.*batch size 2"):
        m(local, canvas, canvas)
    m.set_viewpoint(Viewpoint.full_scene(1), local_grid=[2, 2])  # batch 1 broadcasts; lists accepted
    assert m.local_grid == (2, 2)
    out_one = m(local, canvas, canvas)
    m.set_viewpoint(Viewpoint.full_scene(2), local_grid=(2, 2))
    torch.testing.assert_close(m(local, canvas, canvas), out_one)
    for kernel in ("auto", "reference"):
        assert CanvasWriteAttention(16, 2, kernel=kernel).kernel == kernel


def test_shifted_moves_the_centres_only():
    vp = Viewpoint(torch.tensor([[0.1, 0.2], [0.0, -0.3]]), torch.tensor([0.5, 0.25]))
    for delta in (torch.tensor([0.3, -0.4]), torch.tensor([[0.3, -0.4], [0.1, 0.1]]), [0.3, -0.4]):
        moved = vp.shifted(delta)
        torch.testing.assert_close(moved.centers, vp.centers + torch.as_tensor(delta))
        torch.testing.assert_close(moved.scales, vp.scales)
        torch.testing.assert_close(viewpoint_coords(moved, 3, 3),
                                   viewpoint_coords(vp, 3, 3) + torch.as_tensor(delta).view(-1, 1, 2))


def test_registered_and_resolved_through_the_plugin_layer():
    plugins = pytest.importorskip("canvas_core.plugins")
    assert {"canvas_read", "canvas_write"} <= set(plugins.list_attention_types())
    r = plugins.create_attention("canvas_read", d_model=16, n_heads=2, canvas_dim=32)
    assert isinstance(r, CanvasReadAttention) and r.canvas_dim == 32
    w = plugins.create_attention("canvas_write", d_model=16, n_heads=2, gate=True)
    assert isinstance(w, CanvasWriteAttention) and w.gate_logit is not None
    res = plugins.resolve_attention("canvas_write", plugins.RuntimeContext(device="cpu"))
    assert res.attention.name == "canvas_write"


@pytest.mark.parametrize("name", ["canvas_read", "canvas_write"])
def test_conformance_suite(name):
    testing = pytest.importorskip("canvas_core.testing")
    if not hasattr(testing, "check_attention_type"):
        pytest.skip("canvas_core.testing.check_attention_type is not available yet")
    report = testing.check_attention_type(name, strict=True)  # the runtime contract for topologies
    assert not report.failed, report.failed
    gated = testing.check_attention_type("canvas_write", gate=True)  # a gated write keeps the canvas
    assert not gated.failed, gated.failed


def test_registering_does_not_import_torch():
    import subprocess
    import sys

    calls = []

    class FakeRegistry:
        def add(self, name, factory, **meta):
            calls.append((name, factory))

    import canvas_plugin_canvit

    canvas_plugin_canvit.canvas_register_attention(FakeRegistry())
    assert dict(calls) == {"canvas_read": "canvas_plugin_canvit.attention:CanvasReadAttention",
                           "canvas_write": "canvas_plugin_canvit.attention:CanvasWriteAttention"}
    code = "import canvas_plugin_canvit, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=30, deadline=None)
@given(dy=st.floats(-1.5, 1.5), dx=st.floats(-1.5, 1.5), write=st.booleans(), seed=st.integers(0, 9999))
def test_translation_equivariance_property(dy, dx, write, seed):
    torch.manual_seed(seed)
    m = CanvasWriteAttention(16, 2) if write else CanvasReadAttention(16, 2)
    q, k = torch.randn(1, 6, 16), torch.randn(1, 9, 16)
    qc, kc = torch.rand(1, 6, 2) * 2 - 1, torch.rand(1, 9, 2) * 2 - 1
    d = torch.tensor([[dy, dx]])
    with torch.no_grad():
        torch.testing.assert_close(m(q, k, k, q_coords=qc + d, k_coords=kc + d),
                                   m(q, k, k, q_coords=qc, k_coords=kc), atol=2e-4, rtol=1e-3)
