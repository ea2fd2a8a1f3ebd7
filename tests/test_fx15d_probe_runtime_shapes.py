"""The build-time probe of a plugin type also runs at the shapes the runtime will call it with.

Audit: the probe made one tiny call (4 queries, 6 keys, key sets of 3), so a type that mixed the
rows of its batch only for key sets longer than 4, or that declared ``key_mask_exact = True`` and
ignored the mask only for more than 8 keys, was accepted, and then read unlinked keys / other
samples inside a canvas layer and a grafted backbone.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import canvas_core.plugins as P
import canvas_core.runtime.type_probe as TP
from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection
from canvas_core.errors import AttentionContractError, BackboneError, CanvasError
from canvas_core.plugins import PluginHost, use_host

torch.set_num_threads(1)

# a: top row, b: bottom row, 4 positions each per frame, 4 frames
LAYOUT = CanvasLayout(T=4, H=2, W=4, d_model=8, regions={"a": (0, 4, 0, 1, 0, 4), "b": (0, 4, 1, 2, 0, 4)})


@pytest.fixture(autouse=True)
def host(request):
    if "backbone" in request.node.name:  # the installed plugins' adapters; types registered there removed after
        names = set(P.list_attention_types())
        yield None
        for name in set(P.list_attention_types()) - names:
            P.unregister_attention(name)
        return
    with use_host(PluginHost(entry_points=lambda: [])) as h:
        yield h


class _Base(nn.Module):
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.p = nn.Linear(d_model, d_model)


class MixesBatchOnLongKeySets(_Base):
    """Per key set; pools over the flattened batch once a key set holds more than 4 keys."""

    def forward(self, queries, keys, values):
        B, Nk, D = values.shape
        pooled = values.mean(1, keepdim=True)
        if Nk > 4:
            pooled = values.reshape(1, B * Nk, D).mean(1, keepdim=True).expand(B, 1, D)
        return self.p(pooled).expand_as(queries) + queries


class HonestPerKeySet(_Base):
    def forward(self, queries, keys, values):
        return self.p(values.mean(1, keepdim=True)).expand_as(queries) + queries


def _masked_mean(self, queries, values, key_mask):
    m = key_mask.to(values.dtype)
    s = m.sum(-1, keepdim=True)
    return torch.where(s > 0, self.p(queries) + (m @ values) / s.clamp_min(1), torch.zeros_like(queries))


class IgnoresMaskOnManyKeys(_Base):
    """Declares an exact mask; reads every key once a call holds more than 8 keys."""
    key_mask_exact = True

    def forward(self, queries, keys, values, key_mask=None):
        if key_mask is None or keys.shape[1] > 8:
            return self.p(queries) + values.mean(1, keepdim=True).expand_as(queries)
        return _masked_mean(self, queries, values, key_mask)


class HonestExact(_Base):
    key_mask_exact = True

    def forward(self, queries, keys, values, key_mask=None):
        if key_mask is None:
            return self.p(queries) + values.mean(1, keepdim=True).expand_as(queries)
        return _masked_mean(self, queries, values, key_mask)


# (name, class, what the refusal says, t_dst of a -> b: per-key-set, every frame of b is one key set
# of 16 keys; exact, b's frame 0 for a query of a's frame 0: a masked call over 16 keys, 4 linked)
LIARS = [("fx15d_long", MixesBatchOnLongKeySets, "called once per key set (key sets of one shape stacked", None),
         ("fx15d_mask", IgnoresMaskOnManyKeys, "declares key_mask_exact = True but its masked call", 0)]


def _layer(fn, topology=None):
    # a -> b in the same frame: each query of a links the 4 keys of b's frame (plus a itself)
    topology = topology or CanvasTopology(connections=[Connection("a", "a"),
                                                       Connection("a", "b", t_src=0, t_dst=0, fn=fn)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CanvasAttention(topology, LAYOUT, d_model=8, n_heads=2)


@pytest.mark.parametrize("name,cls,says,t_dst", LIARS)
def test_a_type_cheating_only_at_the_real_shapes_is_refused_when_the_layer_is_built(name, cls, says, t_dst):
    P.register_attention(name, cls)
    # the tiny probe alone passes it: the audit's case
    TP.probe_attention_module(cls(8), name, 8, "tiny")
    with pytest.raises(AttentionContractError) as info:
        _layer(name, CanvasTopology(connections=[Connection("a", "a"),
                                                 Connection("a", "b", t_src=0, t_dst=t_dst, fn=name)]))
    msg = str(info.value)
    assert isinstance(info.value, CanvasError)
    assert msg.startswith(f"connection #1 'a' -> 'b' (fn '{name}')"), msg
    assert says in msg and "at a shape the runtime calls it with" in msg, msg


@pytest.mark.parametrize("name,cls", [("fx15d_ok_sets", HonestPerKeySet), ("fx15d_ok_exact", HonestExact)])
def test_honest_plugin_types_are_still_accepted(name, cls):
    P.register_attention(name, cls)
    layer = _layer(name, CanvasTopology(connections=[Connection("a", "a"),
                                                     Connection("a", "b", t_src=0, t_dst=None, fn=name)]))
    x = torch.randn(2, LAYOUT.num_positions, 8)
    assert torch.isfinite(layer(x)).all()


class FailsOnManyKeys(HonestPerKeySet):
    def forward(self, queries, keys, values):
        if keys.shape[1] > 8:
            raise RuntimeError("chunk size mismatch")
        return super().forward(queries, keys, values)


def test_a_type_failing_at_a_real_shape_is_refused_at_build_naming_the_connection():
    P.register_attention("fx15d_fails", FailsOnManyKeys)
    topo = CanvasTopology(connections=[Connection("a", "b", t_src=0, t_dst=None, fn="fx15d_fails")])
    with pytest.raises(AttentionContractError, match=r"^connection #0 'a' -> 'b' \(fn 'fx15d_fails'\): .* fails at a "
                       r"shape the runtime calls it with \(4 key sets of 4 queries x 16 keys, stacked\): "
                       r"RuntimeError: chunk size mismatch"):
        _layer("fx15d_fails", topo)


def test_a_larger_call_is_probed_on_a_prefix_within_the_budget(monkeypatch):
    P.register_attention("fx15d_mask", IgnoresMaskOnManyKeys)
    # the masked call: 16 queries x 16 keys at width 8 = 2048; a budget of 4 queries' worth
    monkeypatch.setattr(TP, "SHAPE_BUDGET", 4 * 16 * 8)
    with pytest.raises(AttentionContractError, match="probed on a prefix: 4 queries x 16 keys"):
        _layer("fx15d_mask", CanvasTopology(connections=[Connection("a", "b", t_src=0, t_dst=0, fn="fx15d_mask")]))


def _counting(monkeypatch):
    calls = []
    real = TP.probe_runtime_shapes

    def counted(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(TP, "probe_runtime_shapes", counted)
    return calls


def test_a_layer_of_builtin_types_pays_nothing_new_at_build(monkeypatch):
    calls = _counting(monkeypatch)
    topo = CanvasTopology(connections=[Connection("a", "a"), Connection("a", "b", fn="linear_attention"),
                                       Connection("b", "a", fn="perceiver"), Connection("b", "b", fn="rwkv")])
    _layer(None, topo)
    assert calls == []
    P.register_attention("fx15d_ok_sets", HonestPerKeySet)
    _layer("fx15d_ok_sets")
    assert calls == ["fx15d_ok_sets"]


# --- inside a tiny grafted CogVideoX ---------------------------------------------------------
def _cogvideox():
    pytest.importorskip("diffusers")
    from tests.looping._backbone_setup import inputs, make, user_layout
    from canvas_core.looping import get_adapter, graft_looped_blocks

    m = make("cogvideox", torch.float64)
    kw = inputs("cogvideox", torch.float64)
    graft_looped_blocks(m, max_loops=1)
    ad = get_adapter(m)
    return m, ad, user_layout(ad.token_layout(m, kw), 1)


def _dense_plus(fn):
    regions = ("top", "bottom", "extra")
    dense = [Connection(a, b) for a in regions for b in regions]
    return CanvasTopology(connections=dense + [Connection("top", "bottom", fn=fn, t_src=0, t_dst=0)])


def test_inside_a_backbone_the_cheats_are_refused_at_install_and_honest_types_installed(monkeypatch):
    m, ad, tokens = _cogvideox()
    keys = set(m.state_dict())
    for name, cls, says, _ in LIARS:
        P.register_attention(name, cls)
        with pytest.raises(BackboneError) as info:
            ad.install_topology(m, _dense_plus(name), tokens)
        msg = str(info.value)
        assert msg.startswith(f"connection #9 'top' -> 'bottom' (fn '{name}') cannot run inside 'cogvideox'"), msg
        assert says in msg and "at a shape the runtime calls it with" in msg, msg
        assert ad.installed_topology(m) is None and set(m.state_dict()) == keys
    calls = _counting(monkeypatch)
    ad.install_topology(m, _dense_plus("linear_attention"), tokens)  # builtin: no new probe
    assert calls == []
    ad.remove_topology(m)
    for name, cls in (("fx15d_ok_sets", HonestPerKeySet), ("fx15d_ok_exact", HonestExact)):
        P.register_attention(name, cls)
        ad.install_topology(m, _dense_plus(name), tokens)
        assert ad.installed_topology(m) is not None
    assert calls == ["fx15d_ok_sets", "fx15d_ok_exact"]
