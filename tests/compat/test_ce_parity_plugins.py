"""Parity with canvas-engineering 0.5.0 for the plugin attention types (``MambaAttention``,
``CogVideoXAttention``), the looped-block ``forward`` signatures, and the names every
``canvas_engineering.<module>`` exposes (``compiler`` included) under ``canvas_core.<module>``.

Signatures are compared with :func:`inspect.signature`; behaviour is checked on small inputs.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core.errors import CanvasTypeError

ce = pytest.importorskip("canvas_engineering")

P = inspect.Parameter
_NOT_THEIRS = ("torch", "typing", "typing_extensions", "numpy", "pydantic", "builtins", "einops")


def _params(fn):
    """``[(name, kind, default)]`` of ``fn`` without ``self``."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()
            if p.name != "self"]


def _matches_with_keyword_only_extras(theirs, mine):
    """Same parameters as canvas-engineering in the same order with the same defaults; anything
    canvas-core adds is keyword-only with a default (or ``**kwargs``)."""
    mine_main = [p for p in mine if p[1] not in (P.KEYWORD_ONLY, P.VAR_KEYWORD)]
    theirs_main = [p for p in theirs if p[1] not in (P.KEYWORD_ONLY, P.VAR_KEYWORD)]
    assert mine_main == theirs_main
    extras = [p for p in mine if p not in theirs]
    assert all(k == P.VAR_KEYWORD or (k == P.KEYWORD_ONLY and d is not P.empty)
               for _, k, d in extras), extras


# ------------------------------------------------------------------------ MambaAttention
def _mamba():
    pytest.importorskip("canvas_plugin_mamba")
    return cc.MambaAttention


def test_mamba_signature_matches_canvas_engineering():
    mamba = _mamba()
    theirs, mine = _params(ce.MambaAttention.__init__), _params(mamba.__init__)
    _matches_with_keyword_only_extras(theirs, mine)
    assert [n for n, _, _ in mine] == ["d_model", "n_heads", "dropout", "state_size", "dt_rank",
                                       "d_state", "d_conv", "expand", "kernel"]
    assert _params(mamba.forward)[:3] == _params(ce.MambaAttention.forward)


def test_mamba_positional_arguments_mean_what_they_mean_in_canvas_engineering():
    mamba = _mamba()
    m = mamba(8, 2, 0.0, 6, 3)  # d_model, n_heads, dropout, state_size, dt_rank
    assert (m.d_state, m.state_size, m.dt_rank, m.n_heads) == (6, 6, 3, 2)
    assert m.d_conv == 4 and m.expand == 1 and m.kernel == "auto"
    # canvas-engineering's state is d_model x state_size; so is the default one here
    assert m.A_log.shape == ce.MambaAttention(8, 2, 0.0, 6, 3).A_log.shape == (8, 6)
    assert mamba(8).n_heads == 4  # canvas-engineering's default
    assert mamba(8, 2, d_state=5).d_state == 5  # Mamba's own name, keyword-only
    assert mamba(8, 2, state_size=5, d_state=5).d_state == 5
    with pytest.raises(CanvasTypeError, match="state_size"):
        mamba(8, 2, state_size=5, d_state=7)
    with pytest.raises(CanvasTypeError, match="state_size"):
        mamba(8, 2, 0.0, 0)
    with pytest.raises(TypeError):
        mamba(8, 2, 0.0, 16, 0, 4)  # d_conv is keyword-only
    k = mamba(8, 2, d_conv=3, expand=2, kernel="mamba_torch")  # Mamba's own expansion
    assert (k.d_conv, k.expand, k.kernel, k.d_inner, k.A_log.shape) == (3, 2, "mamba_torch", 16, (16, 16))


def test_mamba_factory_contract_and_kernel_keyword():
    _mamba()
    m = cc.create_attention("mamba", d_model=8, n_heads=2, dropout=0.0)
    q = torch.randn(2, 5, 8)
    assert m(q, q, q).shape == (2, 5, 8)
    m2 = cc.create_attention("mamba", d_model=8, n_heads=2, dropout=0.0, kernel="mamba_torch",
                             d_state=4)
    assert m2(q, q, q).shape == (2, 5, 8) and m2.kernel_used == "mamba_torch"


# ---------------------------------------------------------------------- CogVideoXAttention
def test_cogvideox_attention_signature_matches_canvas_engineering():
    pytest.importorskip("canvas_plugin_cogvideox")
    cls = cc.CogVideoXAttention
    assert _params(cls.__init__) == _params(ce.CogVideoXAttention.__init__)
    assert _params(cls.forward)[:3] == _params(ce.CogVideoXAttention.forward)
    a = cls(16)
    assert a.n_heads == 4
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    assert cls(16, 2, 0.0)(q, kv, kv).shape == (2, 3, 16)


# ------------------------------------------------------------------- looped block forward
class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, hidden_states, scale=1.0):
        return self.lin(hidden_states) * scale


class _TwoStream(nn.Module):
    """A CogVideoX-shaped block: records what it is given."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.seen = []

    def forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None,
                attention_kwargs=None):
        self.seen.append((image_rotary_emb, attention_kwargs))
        return self.lin(hidden_states) + temb, encoder_hidden_states * 2


def test_looped_block_wrapper_forward_signature_matches():
    from canvas_core.looped_block import LoopedBlockWrapper

    from canvas_engineering.looped_block import LoopedBlockWrapper as Theirs

    assert _params(LoopedBlockWrapper.forward) == _params(Theirs.forward)
    assert _params(LoopedBlockWrapper.__init__)[:6] == _params(Theirs.__init__)


def test_looped_block_wrapper_calls_keep_working():
    from canvas_core.looping.wrapper import BlockIO, LoopedBlockWrapper

    torch.manual_seed(0)
    blk = _Block(4)
    x = torch.randn(2, 3, 4)
    w = LoopedBlockWrapper(blk, max_loops=3, embed_dim=4)
    ref = blk(x, scale=0.5)
    assert torch.equal(w(x, 0.5), ref)  # extra positional passes through
    assert torch.equal(w(hidden_states=x, scale=0.5), ref)  # keyword
    assert torch.equal(w.forward(x, scale=0.5), ref)
    with pytest.raises(CanvasTypeError, match="hidden_states"):
        w(scale=0.5)
    # a first stream named otherwise in ``io`` may be given by its own keyword
    wx = LoopedBlockWrapper(nn.Identity(), max_loops=2, embed_dim=4, io=BlockIO(("x",)))
    assert torch.equal(wx(x=x), x) and torch.equal(wx(x), x) and torch.equal(wx(hidden_states=x), x)
    with pytest.raises(CanvasTypeError, match="'x'"):
        wx()


def test_looped_cogvideox_block_forward_signature_and_pass_through():
    from canvas_core.cogvideox import LoopedCogVideoXBlock

    from canvas_engineering.cogvideox import LoopedCogVideoXBlock as Theirs

    assert _params(LoopedCogVideoXBlock.forward) == _params(Theirs.forward)
    assert _params(LoopedCogVideoXBlock.__init__)[:4] == _params(Theirs.__init__)
    torch.manual_seed(0)
    blk = _TwoStream(4)
    looped = LoopedCogVideoXBlock(blk, 0, 3, 4)
    h, enc, temb = torch.randn(2, 5, 4), torch.randn(2, 2, 4), torch.randn(2, 1, 4)
    rope = torch.randn(5, 4)
    with torch.no_grad():
        ref = blk(h, enc, temb)
        blk.seen.clear()
        for out in (looped(h, enc, temb),
                    looped(hidden_states=h, encoder_hidden_states=enc, temb=temb),
                    looped(h, enc, temb, rope, attention_kwargs={"a": 1})):
            torch.testing.assert_close(out[0], ref[0])
            torch.testing.assert_close(out[1], ref[1])
    assert blk.seen[:6] == [(None, None)] * 6  # current_loops == 3 calls per forward
    assert all(r is rope and k == {"a": 1} for r, k in blk.seen[6:]) and len(blk.seen) == 9


# ------------------------------------------------------------- names of every submodule
def _foreign(obj) -> bool:
    if inspect.ismodule(obj):
        return True
    root = (getattr(obj, "__module__", None) or "").split(".")[0]
    return root in sys.stdlib_module_names or root in _NOT_THEIRS


@pytest.mark.parametrize("sub", sorted(m.name for m in pkgutil.iter_modules(ce.__path__)))
def test_every_public_name_of_every_canvas_engineering_module_imports(sub):
    """``from canvas_engineering.<sub> import X`` works as ``from canvas_core.<sub> import X``."""
    theirs = importlib.import_module(f"canvas_engineering.{sub}")
    mine = importlib.import_module(f"canvas_core.{sub}")
    names = dict.fromkeys(list(getattr(theirs, "__all__", [])) + list(vars(theirs)))
    missing = []
    for n in names:
        if n.startswith("_") or _foreign(getattr(theirs, n)):
            continue
        try:
            getattr(mine, n)
        except Exception as exc:  # noqa: BLE001 - report every failure
            missing.append(f"{n} ({type(exc).__name__})")
    assert not missing, f"canvas_core.{sub} lacks {missing}"


def test_compiler_reexports_are_the_schema_and_program_classes_and_stay_torch_free():
    from canvas_core.compiler import (CanvasLayout, CanvasProgram, CanvasSchema, CanvasTopology,
                                      Connection, RegionSpec)

    assert (CanvasLayout, CanvasSchema, CanvasTopology, Connection, RegionSpec, CanvasProgram) == (
        cc.CanvasLayout, cc.CanvasSchema, cc.CanvasTopology, cc.Connection, cc.RegionSpec,
        cc.CanvasProgram)
    code = ("import canvas_core, sys; canvas_core.CanvasSchema; import canvas_core.compiler\n"
            "from canvas_core.compiler import CanvasSchema, CanvasProgram, Connection, RegionSpec\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
