"""Telemetry of a rollout reads the rollout's own cache of keys and values (it keeps no copy of its
own), with the numbers of a reference computed the slow way; its per-step bookkeeping is built
once; ``telemetry(model)`` without the model's inputs names them; rollouts that switch in and out
of ``torch.inference_mode`` between steps, and a model called on one frame outside ``roll.step``."""

from __future__ import annotations

from typing import Any, List

import pytest
import torch
from torch import nn

import canvas_core
import canvas_core.runtime.telemetry as tel_mod
from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection
from canvas_core.errors import CanvasTypeError
from canvas_core.runtime.incremental import RolloutError, observe_steps
from canvas_core.runtime.telemetry import record_telemetry, telemetry
from tests.runtime._rollout_models import build_model, frames

torch.set_num_threads(1)

T, V, D = 4, 8, 16
LAYOUT = CanvasLayout(T=T, H=2, W=4, d_model=D, regions={"a": (0, T, 0, 1, 0, 4), "b": (0, T, 1, 2, 0, 4)})
TOPO = CanvasTopology(connections=[  # causal; both softmax-family types, and pooling
    Connection(src="a", dst="a", t_src=0, t_dst=0), Connection(src="a", dst="a", t_src=0, t_dst=-1),
    Connection(src="b", dst="a", t_src=0, t_dst=0),
    Connection(src="b", dst="b", t_src=0, t_dst=-1, fn="self_attention"),
    Connection(src="a", dst="b", t_src=0, t_dst=0, fn="pooling")])


def _x(seed: int = 1, b: int = 2, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, LAYOUT.num_positions, D, generator=g, dtype=torch.float64).to(dtype)


def _tensor_bytes(obj: Any, skip: frozenset = frozenset({"layer"})) -> int:
    """Bytes of the tensors a probe holds (its layer, and so the model, left out)."""
    seen, total, todo = set(), 0, [obj]
    while todo:
        o = todo.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            total += o.numel() * o.element_size()
        elif isinstance(o, dict):
            todo.extend(v for k, v in o.items() if k not in skip)
        elif isinstance(o, (list, tuple)):
            todo.extend(o)
        elif hasattr(o, "__dict__") or hasattr(o, "__slots__"):
            attrs = dict(vars(o)) if hasattr(o, "__dict__") else {}
            attrs.update({s: getattr(o, s) for s in getattr(type(o), "__slots__", ()) if hasattr(o, s)})
            todo.extend(v for k, v in attrs.items() if k not in skip)
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_recording_keeps_no_copy_of_the_rollout_keys(dtype):
    """The probes used to keep float32 keys and values of every frame (+67% of the rollout's
    buffers for a float32 model, +133% for bfloat16); they read the rollout's cache now."""
    model = build_model(TOPO, LAYOUT, depth=2).to(dtype)
    with record_telemetry(model) as tel, torch.no_grad(), canvas_core.incremental(model, LAYOUT) as roll:
        for f in frames(_x(b=16, dtype=dtype), V):
            roll.step(f)
        held = sum(_tensor_bytes(p) for p in tel._probes)
        kv = sum(sum(t.numel() * t.element_size() for t in c.kv) for st in roll._states for c in st.caches)
        assert tel.values()
    assert held < kv / 4, (held, kv)  # the index tensors of the probes only


def _slow_reference(model: nn.Module, xs: List[torch.Tensor], max_queries: int):
    """Every step's inputs, captured, measured afterwards by fresh probes that run ``qkv`` over the
    whole prefix (keys recomputed from the inputs, not read from any cache)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, CanvasAttention)]
    seen = {n: [] for n, _ in layers}
    handles = [observe_steps(m, lambda _l, h, t, n=n: seen[n].append((h.clone(), t))) for n, m in layers]
    try:
        with record_telemetry(model, max_queries=max_queries) as tel, torch.no_grad(), \
                canvas_core.incremental(model, LAYOUT) as roll:
            for x in xs:
                roll.reset()
                for f in frames(x, V):
                    roll.step(f)
    finally:
        for h in handles:
            h.remove()
    got = {k: (m.total, m.count) for p in tel._probes for k, m in p.stats.items()}
    want = {}
    for n, m in layers:
        ref = tel_mod._LayerProbe(n, m, max_queries)
        for h, t in seen[n]:
            ref.softmax_forward(h, t, t + 1)
        want.update({k: (s.total, s.count) for k, s in ref.stats.items()})
    return got, want


@pytest.mark.parametrize("max_queries", [256, 5])
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_the_numbers_equal_a_reference_computed_the_slow_way(dtype, rel, max_queries):
    model = build_model(TOPO, LAYOUT, depth=2).to(dtype)
    got, want = _slow_reference(model, [_x(1, dtype=dtype), _x(2, b=3, dtype=dtype)], max_queries)
    assert got and set(got) == set(want)
    assert {k for k in got if "[self_attention]" in k} and {k for k in got if "[cross_attention]" in k}
    for k, (total, count) in got.items():
        assert count == want[k][1], k
        assert total == pytest.approx(want[k][0], rel=rel, abs=1e-9), k


def test_the_probe_reads_the_keys_the_rollout_attended_over(monkeypatch):
    """Keys written into the rollout's cache are the ones the probe measures: zeroing the cached
    keys of frame 0 after each step changes the shares (a copy would not see it)."""
    model = build_model(TOPO, LAYOUT, depth=1)
    fs = frames(_x(), V)

    def run(zero: bool):
        with record_telemetry(model) as tel, torch.no_grad(), canvas_core.incremental(model, LAYOUT) as roll:
            st = roll._states[0]
            for f in fs:
                roll.step(f)
                if zero:
                    st.caches[0].kv[0][:, :, :V] = 0.0
        return tel.values()

    plain, zeroed = run(False), run(True)
    key = next(k for k in plain if k.endswith("[cross_attention]/mass_share") and "#1 " in k)
    assert plain[key] != pytest.approx(zeroed[key], rel=1e-6)


def test_per_step_bookkeeping_is_built_once(monkeypatch):
    """``frame_size(plan)`` is not recomputed per step, and the index work of a frame (pairs,
    biases, masks) is done in the first episode only."""
    model = build_model(TOPO, LAYOUT, depth=2)
    calls = {"frame_size": 0, "pairs": 0}
    frame_size, pairs = tel_mod.frame_size, getattr(tel_mod, "sampled_links", None)

    def count_fs(plan):
        calls["frame_size"] += 1
        return frame_size(plan)

    def count_pairs(*a):
        calls["pairs"] += 1
        return pairs(*a)

    monkeypatch.setattr(tel_mod, "frame_size", count_fs)
    monkeypatch.setattr(tel_mod, "sampled_links", count_pairs, raising=False)
    with record_telemetry(model) as tel, torch.no_grad(), canvas_core.incremental(model, LAYOUT) as roll:
        first = dict(calls)
        for f in frames(_x(1), V):
            roll.step(f)
        after_one = dict(calls)
        roll.reset()
        for f in frames(_x(2), V):
            roll.step(f)
    assert tel.forwards == 2 * T
    assert calls["frame_size"] == first["frame_size"]  # only when the probes were built
    assert after_one["pairs"] > 0 and calls["pairs"] == after_one["pairs"]


def test_telemetry_without_the_inputs_names_them():
    layer = CanvasAttention(TOPO, LAYOUT, n_heads=2)
    with pytest.raises(CanvasTypeError, match=r"CanvasAttention\.forward\(x, active_regions=None\).*'x'.*"
                                              r"telemetry\(layer, x\)"):
        telemetry(layer)
    with pytest.raises(CanvasTypeError, match=r"unexpected keyword argument 'y'"):
        telemetry(layer, _x(dtype=torch.float32), y=1)
    assert telemetry(layer, _x(dtype=torch.float32))  # the inputs it wants: measured


def test_a_model_with_its_own_argument_handling_still_runs():
    """A forward taking ``*args`` and a model whose pre-hook supplies the input are not refused."""
    layer = CanvasAttention(TOPO, LAYOUT, n_heads=2)

    class Loose(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = layer

        def forward(self, *args: Any) -> torch.Tensor:
            return self.attn(args[0])

    assert telemetry(Loose(), _x(dtype=torch.float32))
    x = _x(dtype=torch.float32)
    h = layer.register_forward_pre_hook(lambda _m, args: (x,) if not args else None)
    try:
        assert telemetry(layer)
    finally:
        h.remove()


def test_an_inference_mode_episode_then_a_training_one():
    """Buffers and indices built under ``torch.inference_mode()`` cannot be written or saved for
    backward outside it: the next episode (or step) outside it used to fail with a RolloutError
    blaming the model."""
    model = build_model(TOPO, LAYOUT, depth=2)
    x = _x()
    with torch.no_grad():
        want = model(x)
    with record_telemetry(model) as tel, canvas_core.incremental(model, LAYOUT) as roll:
        with torch.inference_mode():
            for f in frames(x, V):
                roll.step(f)
        roll.reset()
        ys = [roll.step(f) for f in frames(x, V)]  # autograd on
        torch.cat(ys, 1).pow(2).sum().backward()
    assert torch.allclose(torch.cat(ys, 1), want, atol=1e-10)
    assert tel.forwards == 2 * T
    assert all(p.grad is not None for p in model[0].attn.qkv.parameters())


def test_an_episode_that_leaves_inference_mode_midway():
    model = build_model(TOPO, LAYOUT, depth=2)
    x = _x()
    with torch.no_grad():
        want = model(x)
    fs = frames(x, V)
    with canvas_core.incremental(model, LAYOUT) as roll:
        with torch.inference_mode():
            ys = [roll.step(fs[0])]
        with torch.no_grad():
            ys += [roll.step(f) for f in fs[1:]]
    assert torch.allclose(torch.cat([y.clone() for y in ys], 1), want, atol=1e-10)


def test_one_frame_given_to_the_model_outside_a_step_says_so():
    model = build_model(TOPO, LAYOUT, depth=1)
    with torch.no_grad(), canvas_core.incremental(model, LAYOUT):
        with pytest.raises(RolloutError, match=r"outside roll\.step: .*roll\.step\(x_t\).*whole canvas"):
            model(frames(_x(), V)[0])


def test_a_measured_step_reads_nothing_back_from_the_device(monkeypatch):
    """The sums stay where they were computed until the numbers are asked for: a step with
    telemetry converts no more tensors to Python (a wait for the device on a GPU) than without."""
    model = build_model(TOPO, LAYOUT, depth=2)
    fs = frames(_x(), V)
    reads = [0]
    for name in ("tolist", "item", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, real=real: (reads.__setitem__(0, reads[0] + 1),
                                                                             real(self, *a))[1])

    def count(record: bool) -> int:
        with torch.no_grad(), canvas_core.incremental(model, LAYOUT) as roll:
            roll.step(fs[0])  # the first step builds the indices
            with (record_telemetry(model) if record else torch.no_grad()) as tel:
                reads[0] = 0
                for f in fs[1:]:
                    roll.step(f)
                n = reads[0]
        if record:
            assert tel.values() and tel.forwards == T - 1
        return n

    assert count(True) == count(False)


def test_models_that_call_forward_their_own_way_are_not_refused() -> None:
    """telemetry calls model(...), not model.forward: a custom __call__, a decorator that supplies an
    argument, and a global pre-hook that supplies the input all run (the check happens only after a
    TypeError)."""
    import functools

    lay = CanvasLayout(T=1, H=2, W=2, d_model=8, regions={"a": (0, 1, 0, 1, 0, 2), "b": (0, 1, 1, 2, 0, 2)})
    x = torch.randn(1, 4, 8)

    def layer() -> CanvasAttention:
        return CanvasAttention(CanvasTopology.dense(["a", "b"]), lay, n_heads=2)

    class OwnCall(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = layer()

        def forward(self, x: torch.Tensor, y: float) -> torch.Tensor:
            return self.attn(x) + y

        def __call__(self, batch: dict) -> torch.Tensor:
            return super().__call__(batch["x"], batch["y"])

    def supplies_scale(f):
        @functools.wraps(f)
        def wrapped(self, x):
            return f(self, x, 1.0)
        return wrapped

    class Decorated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = layer()

        @supplies_scale
        def forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
            return self.attn(x) * scale

    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = layer()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x)

    assert telemetry(OwnCall(), {"x": x, "y": 0.0})
    assert telemetry(Decorated(), x)
    plain = Plain()
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda mod, args: (x,) if mod is plain and not args else None)
    try:
        assert telemetry(plain)
    finally:
        hook.remove()
    with pytest.raises(CanvasTypeError, match=r"Plain\.forward\(x\) cannot take the inputs given"):
        telemetry(plain)


def test_a_models_own_type_error_behind_a_decorator_is_not_blamed_on_the_inputs() -> None:
    import functools

    def supplies_scale(f):
        @functools.wraps(f)
        def wrapped(self, x):
            return f(self, x, 1.0)
        return wrapped

    class Broken(nn.Module):
        @supplies_scale
        def forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
            return torch.cat(x, 1) * scale  # a TypeError of the model's own

    with pytest.raises(TypeError, match="cat") as info:
        telemetry(Broken(), torch.randn(2, 4))
    assert not isinstance(info.value, CanvasTypeError)


def test_a_forward_under_a_torch_decorator_still_gets_the_diagnosis() -> None:
    class NoGrad(nn.Module):
        @torch.no_grad()
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(CanvasTypeError, match=r"NoGrad\.forward\(x\) cannot take the inputs given"):
        telemetry(NoGrad(), torch.randn(2, 4), torch.randn(2, 4))


def test_a_decorator_with_its_own_signature_keeps_its_own_type_error() -> None:
    import functools

    def accepts_mask(f):
        @functools.wraps(f)
        def wrapped(self, x, mask=None):
            return f(self, x * mask)  # a TypeError of the decorator's own for a bad mask
        return wrapped

    class Masked(nn.Module):
        @accepts_mask
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(TypeError) as info:
        telemetry(Masked(), torch.randn(2, 2), mask="bad")
    assert not isinstance(info.value, CanvasTypeError)
