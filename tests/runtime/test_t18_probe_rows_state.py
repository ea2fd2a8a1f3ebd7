"""Issue 23 audit: the build-time probe of a plugin type sees as many stacked rows as the layer's
calls stack, refuses a type keeping state between calls, and verify's headline says what a skipped
value check left unchecked; ``attention_factory`` may be positional; a ``none`` edge is no off switch.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection, verify_structure
from canvas_core.errors import AttentionContractError, CanvasTypeError, TopologyError
from canvas_core.plugins import register_attention
from canvas_core.runtime.dispatch import AttentionDispatcher
from canvas_core.testing import isolated_plugins
from tests._hostile_types import KeepsState, ManyRowsLeak, PlainSoftmax

torch.set_num_threads(1)


def _layout(T):
    return CanvasLayout(T=T, H=2, W=3, d_model=16, regions={"a": (0, T, 0, 1, 0, 3), "b": (0, T, 1, 2, 0, 3)})


def test_a_type_mixing_rows_only_above_8_is_refused_when_9_frames_stack():
    with isolated_plugins():
        register_attention("rows_leak", ManyRowsLeak)
        top = CanvasTopology(connections=[Connection("b", "a", t_src=0, t_dst=0, fn="rows_leak")])
        with pytest.raises(AttentionContractError) as err:
            AttentionDispatcher(top, _layout(9), d_model=16, n_heads=2)  # 9 key sets: 9 rows at batch 1
    msg = str(err.value)
    assert msg.startswith("connection #0 'b' -> 'a' (fn 'rows_leak')"), msg
    assert "rows stacked in one call" in msg and "sample 0's first key set changed" in msg, msg


def test_a_type_keeping_state_between_calls_is_refused_naming_the_connection():
    lay = CanvasLayout(T=4, H=4, W=3, d_model=16, regions={"a": (0, 4, 0, 1, 0, 3), "v": (0, 4, 1, 2, 0, 3),
                                                          "b": (0, 4, 2, 3, 0, 3), "c": (0, 4, 3, 4, 0, 3)})
    with isolated_plugins():
        register_attention("keeps_state", KeepsState)
        top = CanvasTopology(connections=[Connection("c", "a", t_src=0, t_dst=0, fn="keeps_state"),
                                          Connection("b", "v", t_src=0, t_dst=0, fn="keeps_state")])
        with pytest.raises(AttentionContractError) as err:
            AttentionDispatcher(top, lay, d_model=16, n_heads=2)
    msg = str(err.value)
    assert msg.startswith("connection #0 'c' -> 'a', #1 'b' -> 'v' (fn 'keeps_state')"), msg
    assert "keeps state between calls" in msg and "one connection's keys reach another's queries" in msg, msg


def test_honest_plugin_types_still_build():
    with isolated_plugins():
        register_attention("plain_softmax", PlainSoftmax)
        top = CanvasTopology(connections=[Connection("b", "a", t_src=0, t_dst=0, fn="plain_softmax")])
        layer = AttentionDispatcher(top, _layout(9), d_model=16, n_heads=2)
    assert layer(torch.randn(1, 54, 16)).shape == (1, 54, 16)


class _Noisy(nn.Module):
    """A layer plus noise: its identical calls differ, so verify's value check is skipped."""

    def __init__(self):
        super().__init__()
        self.layer = CanvasAttention(CanvasTopology(connections=[Connection("b", "a", t_src=0, t_dst=0)]),
                                     _layout(3), n_heads=2)

    def forward(self, x):
        return x + self.layer(x) + 1e-3 * torch.randn_like(x)


def test_verify_headline_does_not_claim_every_dependency_when_the_value_check_was_skipped():
    torch.manual_seed(0)
    report = verify_structure(_Noisy())
    text = str(report)
    assert report.ok and any("value check skipped" in n for n in report.notes), text
    assert "every dependency is declared and every declared link carries signal" not in text, text
    assert "checked by gradient: no undeclared read" in text and "NOT checked: reads without a gradient" in text, text


def test_attention_factory_may_be_positional_or_keyword_and_a_wrong_one_is_named():
    top = CanvasTopology(connections=[Connection("b", "a", t_src=0, t_dst=0, fn="pooling")])
    pos = CanvasAttention(top, _layout(3), n_heads=2, attention_factory=lambda fn, d, h, p: PlainSoftmax(d, h, p))
    kw = CanvasAttention(top, _layout(3), n_heads=2,
                         attention_factory=lambda fn, d_model, n_heads, dropout: PlainSoftmax(d_model, n_heads))
    assert type(pos.fn_modules["pooling"]) is type(kw.fn_modules["pooling"]) is PlainSoftmax

    def needs_five(fn, d, h, p, extra):
        return PlainSoftmax(d)

    with pytest.raises(CanvasTypeError) as err:
        CanvasAttention(top, _layout(3), n_heads=2, attention_factory=needs_five)
    msg = str(err.value)
    assert "needs_five" in msg and "factory(fn, d_model, n_heads, dropout)" in msg, msg
    assert "'b' -> 'a'" in msg, msg  # the connection using the type


def test_a_none_edge_is_not_an_off_switch_and_the_message_says_so():
    lay = _layout(3)
    torch.manual_seed(0)
    alone = AttentionDispatcher(CanvasTopology(connections=[Connection("b", "a")]), lay, d_model=16, n_heads=2)
    torch.manual_seed(0)
    with_none = AttentionDispatcher(CanvasTopology(connections=[Connection("b", "a"),
                                                                Connection("b", "b", fn="none")]), lay,
                                    d_model=16, n_heads=2)
    x, b = torch.randn(1, 18, 16), lay.region_indices("b")
    with torch.no_grad():
        torch.testing.assert_close(with_none(x)[0, b], alone(x)[0, b] / 2)  # it takes its share of the mix
    with pytest.raises(TopologyError) as err:
        Connection("b", "a", weight=0.0)
    msg = str(err.value)
    assert "use fn='none'" not in msg and "delete the connection" in msg, msg
