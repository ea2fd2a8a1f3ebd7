"""t19: the build probe holds a plugin type to what it declares: ``self_gated = True`` (exactly 0 as
built, else the backbone install would drop the block gate of a branch that is not 0) and
``reads_keys = False`` (no read of a key, by gradient, by value, nor of a NaN key); a refusal of a
read outside the key sets says that its indices are the probe's and gives the fix for the kind of
type; the reports say NO GRADIENT AT INIT in the canvas-layer column too, and a backbone install
of a type whose ``learns_at_init=False`` is wrong says so once, consistently."""

from __future__ import annotations

import warnings

import pytest
import torch

from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.compiler.report import format_groups
from canvas_core.dispatch import AttentionDispatcher
from canvas_core.errors import AttentionContractError, BackboneError
from canvas_core.plugins import register_attention
from canvas_core.testing import isolated_plugins
from tests._hostile_types import (ExactReadsAll, KeyBlindDetached, KeyBlindHonest, KeyBlindLiar, KeyBlindNaN,
                                  MixesKeySets, PlainSoftmax, SelfGatedHonest, SelfGatedLiar)

torch.set_num_threads(1)

LAYOUT = CanvasLayout(T=4, H=2, W=3, d_model=16, regions={"a": (0, 4, 0, 1, 0, 3), "b": (0, 4, 1, 2, 0, 3)})
WHERE = "connection #0 'b' -> 'a' (fn 't19d')"


def _build(cls, **reg):
    with isolated_plugins():
        register_attention("t19d", cls, **reg)
        top = CanvasTopology(connections=[Connection("b", "a", t_src=0, t_dst=0, fn="t19d")])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AttentionDispatcher(top, LAYOUT, d_model=16, n_heads=2)


def _refusal(cls):
    with pytest.raises(AttentionContractError) as err:
        _build(cls)
    msg = str(err.value)
    assert msg.startswith(WHERE), msg
    return msg


def test_a_false_self_gated_declaration_is_refused_at_build_naming_the_output_and_the_fix():
    msg = _refusal(SelfGatedLiar)
    assert "'t19d' (SelfGatedLiar) declares self_gated = True" in msg and "max |output|" in msg, msg
    assert "drop the self_gated declaration" in msg and "zero-initialise the type's own gate" in msg, msg
    assert _build(SelfGatedHonest) is not None  # tanh(0) * ...: exactly 0 as built


@pytest.mark.parametrize("cls, said", [(KeyBlindLiar, "has a gradient w.r.t. key"),
                                       (KeyBlindDetached, "when the probe redrew every key and value"),
                                       (KeyBlindNaN, "when key 0 of the probe's call was NaN")])
def test_a_false_reads_keys_declaration_is_refused_at_build(cls, said):
    msg = _refusal(cls)
    assert f"({cls.__name__}) declares reads_keys = False" in msg and said in msg, msg
    assert "drop the reads_keys = False declaration" in msg, msg


def test_a_true_reads_keys_declaration_builds_and_its_rows_ignore_a_nan_key():
    layer = _build(KeyBlindHonest).eval()
    x = torch.randn(1, LAYOUT.num_positions, 16)
    x[0, 3] = float("nan")  # region b at frame 0 (a key of a's queries there): the type reads no key
    with torch.no_grad():
        assert bool(torch.isfinite(layer(x)[0, :3]).all())


def test_a_leak_refusal_numbers_in_the_probes_call_and_fixes_the_kind_of_type():
    per_set = _refusal(MixesKeySets)
    assert "called once per key set" in per_set and "numbered in the probe's call, not canvas positions" in per_set
    assert "key_mask" not in per_set and "never mix the queries, nor the rows of a call" in per_set, per_set
    exact = _refusal(ExactReadsAll)
    assert "declares key_mask_exact = True" in exact and "in the probe's call" in exact, exact
    assert "honour key_mask exactly" in exact and "drop the key_mask_exact declaration" in exact, exact


class TwoZeroGates(PlainSoftmax):
    """No parameter gets a gradient at initialisation: two zero factors in series."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.a = torch.nn.Parameter(torch.zeros(()))
        self.b = torch.nn.Parameter(torch.zeros(()))

    def forward(self, q, k, v):
        return self.a * self.b * self.attend(q, k, v)


def test_the_canvas_layer_column_says_no_gradient_at_init_when_its_probe_finds_it():
    layer = _build(TwoZeroGates)
    assert "t19d" in layer.init_gradient_problems
    row = next(line for line in format_groups(layer.plan).splitlines() if line.startswith("t19d"))
    canvas_col = row.split("own module")[1]
    assert "NO GRADIENT AT INIT" in canvas_col, row
    honest = next(line for line in format_groups(_build(PlainSoftmax).plan).splitlines() if line.startswith("t19d"))
    assert "NO GRADIENT" not in honest, honest


@pytest.fixture(scope="module")
def grafted():
    from tests.looping._backbone_setup import inputs, make, user_layout
    from canvas_core.looping import get_adapter, graft_looped_blocks

    m = make("cogvideox", torch.float32)
    kw = inputs("cogvideox", torch.float32)
    graft_looped_blocks(m, max_loops=1)
    ad = get_adapter(m)
    return m, kw, ad, user_layout(ad.token_layout(m, kw), 1)


def _install(grafted, name, cls, **reg):
    m, kw, ad, tokens = grafted
    register_attention(name, cls, **reg)
    dense = [Connection(a, b) for a in ("top", "bottom", "extra") for b in ("top", "bottom", "extra")]
    return ad.install_topology(m, CanvasTopology(connections=dense + [Connection("top", "bottom", fn=name)]), tokens)


def test_a_backbone_install_refuses_a_false_self_gated_type_and_keeps_the_graft_equal_with_a_true_one(grafted):
    m, kw, ad, _ = grafted
    with torch.no_grad():
        y0 = m(**kw).sample
    with isolated_plugins():
        with pytest.raises(BackboneError, match=r"fn 't19d_liar'.*declares self_gated = True.*max \|output\|"):
            _install(grafted, "t19d_liar", SelfGatedLiar)
        with torch.no_grad():
            assert torch.equal(m(**kw).sample, y0)  # refused: the model unchanged
        report = _install(grafted, "t19d_gated", SelfGatedHonest).report()
        assert "the type's own (0 at init); learns from step 1" in report, report
        with torch.no_grad():
            assert torch.equal(m(**kw).sample, y0)  # its own gate, 0 as built: the backbone at init
        ad.remove_topology(m)


def test_a_backbone_report_of_a_wrong_learns_at_init_declaration_is_consistent(grafted):
    m, _, ad, _ = grafted
    with isolated_plugins():
        report = _install(grafted, "t19d_learns", PlainSoftmax, learns_at_init=False).report()
        ad.remove_topology(m)
    row = next(line for line in report.splitlines() if line.startswith("t19d_learns"))
    assert "learns from step 1 (its learns_at_init=False is wrong)" in row, report
    assert "receives a gradient at initialisation" not in report, report  # the declaration's claim is gone
    assert "declares learns_at_init=False, but inside 'cogvideox' the build probe finds a gradient" in report, report


def test_a_canvas_layer_corrects_a_wrong_learns_at_init_declaration_in_its_plan():
    from canvas_core import CanvasSchema, ProgramCompiler
    from canvas_core.runtime.canvas_attention import CanvasAttention

    with isolated_plugins():
        register_attention("t19d", PlainSoftmax, learns_at_init=False)
        top = CanvasTopology(connections=[Connection("b", "a", t_src=0, t_dst=0, fn="t19d")])
        plan = ProgramCompiler(CanvasSchema(layout=LAYOUT, topology=top)).compile().plan
        assert "NO GRADIENT AT INIT" in format_groups(plan)  # the compiler believes the declaration
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = CanvasAttention(plan, d_model=16, n_heads=2)
    assert "t19d" not in layer.init_gradient_problems
    assert "NO GRADIENT AT INIT" not in format_groups(layer.plan), format_groups(layer.plan)
    note = layer.plan.groups["t19d"].resolved.note
    assert "declares learns_at_init=False, but in a canvas layer the build probe finds a gradient" in note, note


class _DetachedParameter(PlainSoftmax):
    """Honestly gets no gradient at initialisation: its only parameter is read behind ``.detach()``."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.proj.requires_grad_(False)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, q, k, v):
        return self.attend(q, k, v) * self.scale.detach()


def test_a_true_learns_at_init_declaration_stays_when_the_probe_cannot_run():
    """Under inference_mode the gradient probe does not run: its silence is no evidence."""
    from canvas_core import CanvasSchema, ProgramCompiler
    from canvas_core.runtime.canvas_attention import CanvasAttention

    with isolated_plugins():
        register_attention("t19d", _DetachedParameter, learns_at_init=False)
        top = CanvasTopology(connections=[Connection("b", "a", t_src=0, t_dst=0, fn="t19d")])
        plan = ProgramCompiler(CanvasSchema(layout=LAYOUT, topology=top)).compile().plan
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            layer = CanvasAttention(plan, d_model=16, n_heads=2)
    assert "NO GRADIENT AT INIT" in format_groups(layer.plan)
    assert "finds a gradient" not in layer.plan.groups["t19d"].resolved.note


def test_a_refused_self_gated_declaration_names_the_instance_override():
    msg = _refusal(SelfGatedLiar)
    assert "module.self_gated = False" in msg, msg
