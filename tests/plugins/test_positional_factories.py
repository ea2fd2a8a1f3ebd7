"""Attention types written for canvas-engineering's protocol: it builds a registered type
positionally, ``cls(d_model, n_heads, dropout, **kwargs)``, so a constructor may name its first
three parameters anything.  canvas-core called every factory by keyword and refused such a type
("does not take 'd_model'"), although the README promises they run unchanged."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import nn

import canvas_core.plugins as P
from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.dispatch import AttentionDispatcher
from canvas_core.errors import CanvasTypeError, FactoryTypeError
from canvas_core.plugins.resolve import build_attention
from canvas_core.plugins.spec import Spec

torch.set_num_threads(1)


class OwnNames(nn.Module):
    """canvas-engineering style: the first three parameters under names of its own."""

    def __init__(self, dim, heads=4, p=0.0, scale=1.0):
        super().__init__()
        self.got = (dim, heads, p, scale)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries, keys, values):
        return self.proj(queries + values.mean(1, keepdim=True)) * self.got[3]


class Keyworded(nn.Module):
    def __init__(self, d_model, window_size, n_heads=4):
        super().__init__()
        self.got = (d_model, window_size, n_heads)


def _build(factory, *args, **kwargs):
    return build_attention(Spec(name="pos_t", factory=factory), *args, **kwargs)


def test_a_constructor_with_its_own_names_is_called_positionally(host):
    P.register_attention("pos_own_names", OwnNames)
    assert P.create_attention("pos_own_names", 16, 2, 0.25).got == (16, 2, 0.25, 1.0)
    assert P.create_attention("pos_own_names", 16, 2, scale=3.0).got == (16, 2, 0.0, 3.0)  # options by keyword
    layout = CanvasLayout(T=2, H=4, W=4, d_model=16, regions={"a": (0, 2, 0, 2, 0, 4), "b": (0, 2, 2, 4, 0, 4)})
    topo = CanvasTopology(connections=[Connection(src="a", dst="b", fn="pos_own_names"),
                                       Connection(src="b", dst="b")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = AttentionDispatcher(topo, layout, d_model=16, n_heads=4)
    assert tuple(layer(torch.randn(1, 32, 16)).shape) == (1, 32, 16)


def test_star_args_partial_and_positional_only_factories():
    assert _build(lambda *a: OwnNames(*a), 8, 2, 0.5).got == (8, 2, 0.5, 1.0)
    assert _build(functools.partial(OwnNames, scale=2.0), 8).got == (8, 4, 0.0, 2.0)
    assert _build(lambda dim, heads, p, /, **kw: OwnNames(dim, heads, p, **kw), 8, 2, scale=5.0).got == (8, 2, 0.0, 5.0)


def test_a_builtin_without_a_signature_that_refuses_keywords():
    assert _build(slice, 16, 4, 0.5) == slice(16, 4, 0.5)  # slice() takes no keyword arguments

    class Opaque:  # a callable whose signature Python cannot read
        @property
        def __signature__(self):
            raise ValueError("no signature found")

        def __call__(self, *args, **kwargs):
            if kwargs:
                raise TypeError("Opaque() takes no keyword arguments")
            return OwnNames(*args)

    assert _build(Opaque(), 8, 2).got == (8, 2, 0.0, 1.0)


def test_a_factory_that_fits_neither_call_keeps_a_clear_error():
    with pytest.raises(CanvasTypeError, match=r"'pos_t'.*does not take 'd_model'.*accepts \['dim'\]"):
        _build(lambda dim: OwnNames(dim), 8)
    with pytest.raises(CanvasTypeError, match=r"called positionally.*does not take the option\(s\) 'window'"):
        _build(OwnNames, 8, window=3)
    # a partial that fixed heads by keyword cannot take three positional arguments any more
    with pytest.raises(CanvasTypeError, match="does not take 'd_model'"):
        _build(functools.partial(OwnNames, heads=2), 8)


def test_a_factory_naming_d_model_is_never_called_positionally():
    # positionally, n_heads would land in window_size: the missing argument is reported instead
    with pytest.raises(FactoryTypeError, match="window_size"):
        _build(Keyworded, 16, 2)
    assert _build(Keyworded, 16, 2, window_size=3).got == (16, 3, 2)
