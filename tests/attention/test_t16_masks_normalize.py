"""One key-mask reader: ``canvas_core.extend.normalize_key_mask`` is what the core types, the mamba
plugin and the canvit plugin all use, so the three accept and refuse the same masks and read the
same allowed pattern from them; masks no type can read (complex, quantized, sparse) are refused."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Tuple

import pytest
import torch
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

import canvas_core
from canvas_core import extend
from canvas_core.errors import CanvasError, CanvasTypeError

pytest.importorskip("canvas_plugin_mamba")
pytest.importorskip("canvas_plugin_canvit")

D, H = 8, 2
#: a core softmax type (uses the bias), a core scan, the mamba plugin and a canvit plugin type
TYPES = ("cross_attention", "rwkv", "mamba", "canvas_read")
DTYPES = (torch.bool, torch.uint8, torch.int64, torch.float16, torch.float32, torch.float64, torch.complex64)


def _modules() -> dict:
    torch.manual_seed(0)
    mods = {n: canvas_core.create_attention(n, D, H).eval() for n in TYPES}
    with torch.no_grad():  # open zero-initialised gates, so the keys reach the output
        for m in mods.values():
            for p in m.parameters():
                if p.numel() and not bool(p.any()):
                    p.normal_(0, 0.5)
    return mods


MODULES = _modules()


def test_extend_publishes_normalize_key_mask_and_the_base_uses_it() -> None:
    from canvas_core.attention import _base, key_masks

    assert "normalize_key_mask" in extend.__all__
    assert extend.normalize_key_mask is key_masks.normalize_key_mask is _base.normalize_key_mask
    assert extend.check_additive_mask is _base.check_additive_mask  # still the one check
    assert "normalize_key_mask" in (extend.__doc__ or "")
    docs = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    listed = docs.split("What `canvas_core.extend` publishes:", 1)[1].split("Importing `canvas_core.extend`", 1)[0]
    assert re.search(r"`normalize_key_mask\(", listed)


def test_the_plugins_use_the_published_reader() -> None:
    import canvas_plugin_canvit.attention as canvit
    import canvas_plugin_mamba.module as mamba

    assert canvit.normalize_key_mask is extend.normalize_key_mask  # an alias, still in its __all__
    assert "normalize_key_mask" in canvit.__all__
    assert mamba.normalize_key_mask is extend.normalize_key_mask
    assert not hasattr(mamba, "_normalize_mask")  # no private copy left


def test_normalize_key_mask_shapes_and_bias() -> None:
    allowed, bias = extend.normalize_key_mask("t", torch.tensor([0.0, float("-inf"), 0.5]), 2, 4, 3)
    assert allowed.shape == bias.shape == (1, 1, 3)
    assert allowed.tolist() == [[[True, False, True]]] and bias.tolist() == [[[0.0, 0.0, 0.5]]]
    allowed, bias = extend.normalize_key_mask("t", torch.tensor([[1, 0, 2], [0, 0, 1]]), 2, 4, 3)
    assert bias is None and allowed.shape == (2, 1, 3)  # (B, Nk), integer: 0 blocks
    assert allowed[:, 0].tolist() == [[True, False, True], [False, False, True]]
    allowed, _ = extend.normalize_key_mask("t", torch.tensor(False), 2, 4, 3)
    assert allowed.shape == (1, 1, 3) and not bool(allowed.any())
    assert extend.normalize_key_mask("t", None, 2, 4, 3) == (None, None)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")  # deprecated, still possible
@pytest.mark.parametrize("name", ["cross_attention", "rwkv"])
@pytest.mark.parametrize("case", ["complex", "quantized", "sparse"])
def test_core_types_refuse_masks_they_cannot_read(name: str, case: str) -> None:
    q, k = torch.randn(2, 3, D), torch.randn(2, 4, D)
    mask = {
        "complex": lambda: torch.zeros(4, dtype=torch.complex64).fill_(complex(float("-inf"), 0)),
        "quantized": lambda: torch.quantize_per_tensor(torch.ones(4), 1.0, 0, torch.quint8),
        "sparse": lambda: torch.ones(3, 4, dtype=torch.bool).to_sparse(),
    }[case]()
    fix = {"complex": r"key_mask\.real", "quantized": r"key_mask\.dequantize\(\)", "sparse": r"key_mask\.to_dense\(\)"}
    with pytest.raises(CanvasTypeError, match=rf"^{name}: key_mask .*{fix[case]}"):
        MODULES[name](q, k, k, key_mask=mask)


@st.composite
def _calls(draw) -> Tuple[int, int, int, torch.Tensor]:
    B, Nq, Nk = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ndim = draw(st.sampled_from((0, 1, 2, 2, 3, 3, 3, 4)))
    full = (1, B, Nq, Nk)[-ndim:] if ndim else ()
    # mostly the call's size or 1 per dimension (broadcastable; B first of two: the (B, Nk) form);
    # one in four draws any sizes, refused unless they happen to fit
    any_size = draw(st.sampled_from((False, False, False, True)))
    shape = tuple(draw(st.sampled_from((f, 1, B, Nq, Nk, 2, 5) if any_size else
                                       (f, f, 1, B) if (ndim, i) == (2, 0) else (f, f, 1)))
                  for i, f in enumerate(full))
    dtype = draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    linked = torch.rand(shape, generator=g) > 0.35
    if dtype == torch.bool:
        mask = linked
    elif dtype.is_floating_point or dtype.is_complex:  # additive: 0 linked, -inf blocked
        mask = torch.zeros(shape, dtype=dtype).masked_fill(~linked, float("-inf"))
        poison = draw(st.sampled_from((None,) * 6 + (float("nan"), float("inf"))))
        if poison is not None and mask.numel():
            mask.view(-1)[0] = poison
    else:  # integer: any nonzero value is linked
        mask = linked.to(dtype) * torch.randint(1, 3, shape, generator=g, dtype=dtype)
    return B, Nq, Nk, mask


def _outcome(fn):
    try:
        return fn(), None
    except CanvasError as e:
        return None, e


_BN = torch.tensor([[True, False, True, True], [False, True, True, False], [True, True, False, True]])


@settings(max_examples=150, deadline=None)
@given(call=_calls())
# the cases where the copies could part ways, always run besides the random ones
@example(call=(3, 2, 4, _BN))  # (B, Nk)
@example(call=(3, 3, 4, _BN))  # B == Nq: (Nq, Nk)
@example(call=(2, 3, 4, torch.tensor([2, 0, 1, 2])))  # integer: nonzero = linked
@example(call=(2, 3, 4, torch.tensor([0.0, float("-inf"), 1.5, 0.0])))  # finite additive values
@example(call=(2, 3, 4, torch.tensor([[0.0], [float("-inf")], [0.0]])))  # (Nq, 1): every key
@example(call=(2, 3, 4, torch.zeros(4, dtype=torch.complex64)))
@example(call=(2, 3, 4, torch.ones(1, 2, 3, 4, dtype=torch.bool)))
def test_core_mamba_and_canvit_read_every_mask_alike(call) -> None:
    B, Nq, Nk, mask = call
    g = torch.Generator().manual_seed(B * 100 + Nq * 10 + Nk)
    q, k = torch.randn(B, Nq, D, generator=g), torch.randn(B, Nk, D, generator=g)
    got, err = _outcome(lambda: extend.normalize_key_mask("owner", mask, B, Nq, Nk, q))
    event("refused: " + type(err).__name__ if err is not None else f"accepted {mask.dtype}")
    for name, mod in MODULES.items():
        if err is not None:  # refused alike: the same class and message, naming the type
            with pytest.raises(type(err)) as info:
                mod(q, k, k, key_mask=mask)
            assert str(info.value) == str(err).replace("owner:", f"{name}:", 1), name
            continue
        allowed, bias = got
        assert allowed.dtype == torch.bool and allowed.shape[-1] == Nk
        # the module reads the mask as the published reader does: its bool pattern, and for a
        # float mask the bias too (as one full additive mask: -inf where not allowed)
        canonical = allowed if bias is None else bias.masked_fill(~allowed, float("-inf"))
        out = mod(q, k, k, key_mask=mask)
        ref = mod(q, k, k, key_mask=canonical.expand(B, Nq, Nk).clone())
        torch.testing.assert_close(out, ref, msg=lambda m, n=name: f"{n}: {m}")

