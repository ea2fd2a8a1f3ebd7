"""The public calling path (``call_attention_type``) refuses the float masks the types refuse, and
``canvas_core.extend`` publishes the check (``check_additive_mask``) that the plugins share."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import canvas_core  # noqa: E402
from canvas_core import extend  # noqa: E402
from canvas_core.errors import CanvasTypeError, ShapeError  # noqa: E402
from canvas_core.runtime.type_call import call_attention_type  # noqa: E402

_MSG = r"^{}: the additive float key_mask of shape \(4, 6\) holds NaN or \+inf"


class _PlainExact(torch.nn.Module):
    """A plugin-style exact-mask type that reads a float mask as linked unless it is -inf."""

    key_mask_exact = True
    type_name = "plain_exact"

    def forward(self, queries, keys, values, key_mask=None):
        w = torch.ones(queries.shape[1], keys.shape[1], dtype=queries.dtype)
        if key_mask is not None:
            w = w * (key_mask != float("-inf")).to(queries.dtype)
        return torch.einsum("qk,bkd->bqd", w, values)


def _qk():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, 16, generator=g), torch.randn(1, 6, 16, generator=g)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["rwkv", "hyena", "perceiver"])
def test_per_key_set_type_refuses_nan_or_posinf_mask(name: str, bad: float) -> None:
    torch.set_num_threads(1)
    m = canvas_core.create_attention(name, 16, 2)
    q, k = _qk()
    mask = torch.zeros(4, 6)
    mask[:, 2] = bad
    with pytest.raises(ShapeError, match=_MSG.format(name)):
        call_attention_type(m, q, k, k, mask, name=name)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_exact_mask_type_refuses_nan_or_posinf_mask(bad: float) -> None:
    q, k = _qk()
    mask = torch.zeros(4, 6)
    mask[1, 3] = bad
    with pytest.raises(ShapeError, match=_MSG.format("plain_exact")):
        call_attention_type(_PlainExact(), q, k, k, mask)


def test_finite_additive_mask_still_reads_as_the_bool_mask() -> None:
    m = canvas_core.create_attention("rwkv", 16, 2)
    q, k = _qk()
    linked = torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.4
    additive = torch.zeros(4, 6).masked_fill(~linked, float("-inf"))
    torch.testing.assert_close(call_attention_type(m, q, k, k, additive, name="rwkv"),
                               call_attention_type(m, q, k, k, linked, name="rwkv"))


@pytest.mark.parametrize("name", ["rwkv", None])
def test_non_tensor_mask_is_a_canvas_type_error(name) -> None:
    m = canvas_core.create_attention("rwkv", 16, 2)
    q, k = _qk()
    with pytest.raises(CanvasTypeError, match=r"^rwkv: key_mask must be a torch.Tensor or None, got list"):
        call_attention_type(m, q, k, k, [[True] * 6] * 4, name=name)


def test_extend_publishes_check_additive_mask() -> None:
    assert "check_additive_mask" in extend.__all__
    from canvas_core.attention._base import check_additive_mask

    assert extend.check_additive_mask is check_additive_mask
    with pytest.raises(ShapeError, match=r"^my_type: the additive float key_mask"):
        extend.check_additive_mask("my_type", torch.tensor([0.0, float("nan")]))
    extend.check_additive_mask("my_type", torch.tensor([0.0, float("-inf")]))  # finite and -inf pass
    docs = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    listed = docs.split("What `canvas_core.extend` publishes:", 1)[1].split("Importing `canvas_core.extend`", 1)[0]
    assert re.search(r"`check_additive_mask\(", listed)


def test_mamba_plugin_uses_the_published_check() -> None:
    pytest.importorskip("canvas_plugin_mamba")
    import importlib

    module = importlib.import_module("canvas_plugin_mamba.module")
    assert module.normalize_key_mask is extend.normalize_key_mask  # not an inline copy
    m = canvas_core.create_attention("mamba", 16, 2)
    q, k = _qk()
    with pytest.raises(ShapeError, match="mamba: the additive float key_mask"):
        m(q, k, k, key_mask=torch.full((4, 6), float("nan")))
