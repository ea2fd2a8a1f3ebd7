"""``call_attention_type`` reads ``key_mask`` with the shared reader (``normalize_key_mask``): the
masks every type refuses (complex, quantized, sparse, another device) are refused on both calling
conventions with the reader's own message naming the type, and a per-key-set type reads the mask
shapes the exact types read.  A plugin's exact-mask call still gets the mask unchanged."""

from __future__ import annotations

from typing import Any, Callable, Dict

import pytest

torch = pytest.importorskip("torch")

import canvas_core  # noqa: E402
from canvas_core.attention.key_masks import check_key_mask, normalize_key_mask  # noqa: E402
from canvas_core.errors import CanvasError, CanvasTypeError, ShapeError  # noqa: E402
from canvas_core.runtime.type_call import call_attention_type, call_exact_masked  # noqa: E402

NQ, NK, D = 4, 6, 16


class _PlugExact(torch.nn.Module):
    """A plugin-style exact-mask type; it records the mask it was handed."""

    key_mask_exact = True
    type_name = "plug_exact"

    def __init__(self) -> None:
        super().__init__()
        self.seen: Any = "not called"

    def forward(self, queries, keys, values, key_mask=None):
        self.seen = key_mask
        w = torch.ones(queries.shape[1], keys.shape[1], dtype=queries.dtype)
        if key_mask is not None:
            real = key_mask.is_floating_point() or key_mask.is_complex()
            w = w * (key_mask != float("-inf") if real else key_mask != 0).to(queries.dtype)
        return torch.einsum("qk,bkd->bqd", w, values)


class _PlugScan(torch.nn.Module):
    """A plugin-style type that declares nothing: called per key set, without a mask."""

    type_name = "plug_scan"

    def forward(self, queries, keys, values, key_mask=None):
        return queries + values.cumsum(1)[:, -1:]


def _linked() -> Any:
    linked = torch.rand(NQ, NK, generator=torch.Generator().manual_seed(3)) > 0.4
    linked[:, 0] = True
    return linked


def _additive() -> Any:
    return torch.zeros(NQ, NK).masked_fill(~_linked(), float("-inf"))


_BAD: Dict[str, Callable[[], Any]] = {
    "complex": lambda: _additive().to(torch.complex64),
    "quantized": lambda: torch.quantize_per_tensor(_linked().float(), 1.0, 0, torch.qint8),
    "sparse bool": lambda: _linked().to_sparse(),
    "sparse float": lambda: _additive().masked_fill(~_linked(), -1e9).to_sparse(),
    "other device": lambda: _linked().to("meta"),
}
_KIND = {"complex": CanvasTypeError, "quantized": CanvasTypeError, "sparse bool": CanvasTypeError,
         "sparse float": CanvasTypeError, "other device": ShapeError}


def _module(kind: str) -> Any:
    if kind in ("rwkv", "cross_attention"):
        return canvas_core.create_attention(kind, D, 2)
    return _PlugExact() if kind == "plug_exact" else _PlugScan()


def _qk(batch: int = 1):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, NQ, D, generator=g), torch.randn(batch, NK, D, generator=g)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")  # deprecated, still possible
@pytest.mark.parametrize("bad", sorted(_BAD))
@pytest.mark.parametrize("kind", ["rwkv", "cross_attention", "plug_exact", "plug_scan"])
@pytest.mark.parametrize("named", [True, False])
def test_t16_tcmask_refused_as_the_reader_refuses(kind: str, bad: str, named: bool) -> None:
    torch.set_num_threads(1)
    m, mask = _module(kind), _BAD[bad]()
    q, k = _qk()
    with pytest.raises(CanvasError) as reader:
        normalize_key_mask(kind, mask, 1, NQ, NK, q)
    with pytest.raises(_KIND[bad]) as got:
        call_attention_type(m, q, k, k, mask, name=kind if named else None)
    assert str(got.value) == str(reader.value)  # the same message, naming the type
    assert str(got.value).startswith(f"{kind}: key_mask ")
    if kind == "plug_exact":
        assert m.seen == "not called"


def test_t16_tcmask_complex_minus_inf_no_longer_reads_as_linked() -> None:
    # before: a complex additive mask went through (rwkv read -inf + 0j != 0 as linked, the plugin
    # got it unchanged); the result equalled the call with every key linked
    q, k = _qk()
    mask = _additive().to(torch.complex128)
    for m in (canvas_core.create_attention("rwkv", D, 2), _PlugExact(), _PlugScan()):
        with pytest.raises(CanvasTypeError, match=r"key_mask has dtype torch.complex128; .*key_mask.real"):
            call_attention_type(m, q, k, k, mask, name="t")


@pytest.mark.parametrize("kind", ["rwkv", "plug_scan"])
def test_t16_tcmask_per_key_set_reads_the_broadcast_shapes(kind: str) -> None:
    """(Nk,), (1, Nk), (B, Nk), (B, 1, Nk) and (Nq, 1) masks read as the exact types read them."""
    torch.set_num_threads(1)
    m = _module(kind)
    q, k = _qk(batch=2)
    keys = torch.tensor([True, False, True, True, False, True])
    full = keys.expand(NQ, NK)
    want = call_attention_type(m, q, k, k, full, name=kind)
    for mask in (keys, keys[None], keys.expand(2, NK), keys.expand(2, 1, NK), keys.float().log()):
        torch.testing.assert_close(call_attention_type(m, q, k, k, mask, name=kind), want)
    rows = torch.tensor([True, False, True, True])[:, None]  # (Nq, 1): every key or none
    out = call_attention_type(m, q, k, k, rows, name=kind)
    torch.testing.assert_close(out, call_attention_type(m, q, k, k, rows.expand(NQ, NK), name=kind))
    assert not out[:, 1].any()


@pytest.mark.parametrize("kind", ["rwkv", "plug_scan", "plug_exact"])
def test_t16_tcmask_int_and_additive_masks_read_as_the_bool_one(kind: str) -> None:
    m = _module(kind)
    q, k = _qk()
    want = call_attention_type(m, q, k, k, _linked(), name=kind)
    for mask in (_linked().to(torch.int32), _linked().to(torch.int64) * 7, _additive()):
        torch.testing.assert_close(call_attention_type(m, q, k, k, mask, name=kind), want)


def test_t16_tcmask_per_key_set_refuses_a_shape_the_reader_refuses() -> None:
    m = canvas_core.create_attention("rwkv", D, 2)
    q, k = _qk()
    with pytest.raises(ShapeError, match=r"^rwkv: key_mask of shape \(4, 5\) does not broadcast to "
                                         r"\(B, Nq, Nk\) = \(1, 4, 6\)"):
        call_attention_type(m, q, k, k, torch.ones(NQ, 5, dtype=torch.bool), name="rwkv")


def test_t16_tcmask_plugin_exact_gets_the_mask_unchanged() -> None:
    m = _PlugExact()
    q, k = _qk()
    for mask in (_linked(), _linked().to(torch.int8), _additive()):
        call_attention_type(m, q, k, k, mask)
        assert m.seen is mask


class _OpCount(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_t16_tcmask_runtime_bool_masks_cost_no_tensor_operation() -> None:
    """The runtime hands a plugin's exact call its own bool masks: their check dispatches no
    tensor operation (so no host sync); a float mask pays the one reduction it paid before."""
    q, _ = _qk()
    for mask in (_linked(), _linked()[None], _linked().to(torch.int64)):
        with _OpCount() as count:
            check_key_mask("plug_exact", mask, q)
        assert count.ops == []
    with _OpCount() as count:
        check_key_mask("plug_exact", _additive(), q)
    assert count.ops.count("aten.amax.default") == 1

    class _Blind(_PlugExact):  # ignores the mask: what is left to count is the runtime's own work
        def forward(self, queries, keys, values, key_mask=None):
            return queries * 2

    q, k = _qk()
    counts = []
    for mask in (None, _linked()):
        with _OpCount() as count:
            call_exact_masked(_Blind(), q, k, k, mask, "plug_exact")
        counts.append(count.ops)
    assert counts[0] == counts[1]
