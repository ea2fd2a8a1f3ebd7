"""Bad inputs to the runtime modules are answered with a CanvasError naming the module.

A catalogue: each case builds a small module and hands it one bad input (wrong type, dtype,
device, width, constructor argument); the error must be a CanvasError (never a raw torch error)
whose message names the module.
"""

from __future__ import annotations

import math

import pytest
import torch

import canvas_core as cc
from canvas_core.errors import CanvasError

LAYOUT = dict(T=2, H=2, W=2, d_model=8, regions={"a": (0, 1, 0, 2, 0, 2), "b": (1, 2, 0, 2, 0, 2)})


def _layout():
    return cc.CanvasLayout(**LAYOUT)


def _topo():
    return cc.CanvasTopology([cc.Connection("a", "b"), cc.Connection("b", "a")])


def attention(**kw):
    return cc.CanvasAttention(_topo(), _layout(), n_heads=2, **kw)


def dispatcher(**kw):
    return cc.AttentionDispatcher(_topo(), _layout(), d_model=8, n_heads=2, **kw)


def _raw(cls, **kw):
    kw.setdefault("d_model", 8)
    return cls(_topo(), _layout(), **kw)


attention.__wrapped__ = lambda **kw: _raw(cc.CanvasAttention, **kw)
dispatcher.__wrapped__ = lambda **kw: _raw(cc.AttentionDispatcher, **kw)


def canvas():
    return cc.SpatiotemporalCanvas(_layout())


X = torch.zeros(2, 8, 8)
BAD_X = {
    "int64": X.long(),
    "float16": X.half(),
    "float64": X.double(),
    "list": X.tolist(),
    "meta": torch.zeros(2, 8, 8, device="meta"),
    "width": torch.zeros(2, 8, 4),
    "positions": torch.zeros(2, 7, 8),
    "rank": torch.zeros(8, 8),
    "None": None,
}

CASES = []
for module_name, build in (("CanvasAttention", attention), ("AttentionDispatcher", dispatcher)):
    for label, bad in BAD_X.items():
        CASES.append((f"{module_name} x={label}", module_name, lambda b=build, x=bad: b()(x)))
    CASES += [
        (f"{module_name} active_regions='ab'", module_name, lambda b=build: b()(X, active_regions="ab")),
        (f"{module_name} active_regions=[1]", module_name, lambda b=build: b()(X, active_regions=[1])),
        (f"{module_name} unknown active region", module_name, lambda b=build: b()(X, active_regions={"zz"})),
        (f"{module_name} d_model=True", module_name, lambda b=build: b.__wrapped__(d_model=True, n_heads=1)),
        (f"{module_name} n_heads=3", module_name, lambda b=build: b.__wrapped__(n_heads=3)),
        (f"{module_name} n_heads=2.0", module_name, lambda b=build: b.__wrapped__(n_heads=2.0)),
        (f"{module_name} beta=nan", module_name, lambda b=build: b(beta=math.nan)),
        (f"{module_name} beta=inf", module_name, lambda b=build: b(beta=math.inf)),
        (f"{module_name} beta='2'", module_name, lambda b=build: b(beta="2")),
        (f"{module_name} dropout=2", module_name, lambda b=build: b(dropout=2.0)),
    ]


def _set_beta_nan():
    layer = attention()
    layer.beta = math.nan


def _place(embeddings, region="a"):
    sc = canvas()
    sc.place(sc.create_empty(2), embeddings, region)


CASES += [
    ("CanvasAttention later beta=nan", "CanvasAttention", _set_beta_nan),
    ("SpatiotemporalCanvas create_empty(-1)", "create_empty", lambda: canvas().create_empty(-1)),
    ("SpatiotemporalCanvas create_empty(2.0)", "create_empty", lambda: canvas().create_empty(2.0)),
    ("SpatiotemporalCanvas create_empty(True)", "create_empty", lambda: canvas().create_empty(True)),
    ("SpatiotemporalCanvas place int64", "SpatiotemporalCanvas.place", lambda: _place(torch.zeros(2, 4, 8).long())),
    ("SpatiotemporalCanvas place list", "SpatiotemporalCanvas.place", lambda: _place([[0.0] * 8] * 4)),
    ("SpatiotemporalCanvas place width", "SpatiotemporalCanvas.place", lambda: _place(torch.zeros(2, 4, 3))),
    ("SpatiotemporalCanvas place meta", "SpatiotemporalCanvas.place", lambda: _place(torch.zeros(2, 4, 8, device="meta"))),
    ("SpatiotemporalCanvas extract meta canvas", "SpatiotemporalCanvas.extract",
     lambda: canvas().extract(torch.zeros(2, 8, 8, device="meta"), "a")),
    ("SpatiotemporalCanvas extract int canvas", "SpatiotemporalCanvas.extract",
     lambda: canvas().extract(torch.zeros(2, 8, 8, dtype=torch.long), "a")),
    ("SpatiotemporalCanvas extract list", "SpatiotemporalCanvas.extract", lambda: canvas().extract([1, 2], "a")),
    ("SpatiotemporalCanvas layout=str", "SpatiotemporalCanvas", lambda: cc.SpatiotemporalCanvas("layout")),
    ("ActionHead list", "ActionHead", lambda: cc.ActionHead(4, 2)([[0.0] * 4])),
    ("ActionHead int64", "ActionHead", lambda: cc.ActionHead(4, 2)(torch.zeros(2, 4, dtype=torch.long))),
    ("ActionHead meta", "ActionHead", lambda: cc.ActionHead(4, 2)(torch.zeros(2, 4, device="meta"))),
    ("ActionHead width", "ActionHead", lambda: cc.ActionHead(4, 2)(torch.zeros(2, 5))),
    ("ActionHead latent_channels=True", "ActionHead", lambda: cc.ActionHead(True, 2)),
    ("PeriodEmbedding d_model=10**9", "PeriodEmbedding", lambda: cc.PeriodEmbedding(10**9)),
    ("FamilyCarrierEmbedding d_model=10**9", "FamilyCarrierEmbedding", lambda: cc.FamilyCarrierEmbedding(10**9)),
    ("SinusoidalPositionalEncodingND d_model=10**9", "SinusoidalPositionalEncodingND",
     lambda: cc.SinusoidalPositionalEncodingND(10**9, 2, (2, 2))),
    ("SinusoidalPositionalEncodingND max_T=10**12", "SinusoidalPositionalEncodingND",
     lambda: cc.SinusoidalPositionalEncodingND(8, 10**12, (2, 2))),
    ("LearnedScheduler n_regions=10**9", "LearnedScheduler", lambda: cc.LearnedScheduler(10**9, 3, 1)),
    ("LearnedScheduler meta summaries", "LearnedScheduler",
     lambda: cc.LearnedScheduler(3, 3, 1)(torch.zeros(3, device="meta"))),
    ("LearnedScheduler int summaries", "LearnedScheduler",
     lambda: cc.LearnedScheduler(3, 3, 1)(torch.zeros(3, dtype=torch.long))),
    ("ResidualAccumulator.update meta", "ResidualAccumulator",
     lambda: cc.ResidualAccumulator(["a"]).update("a", torch.zeros(3, device="meta"))),
    ("ResidualAccumulator.update unknown region", "ResidualAccumulator",
     lambda: cc.ResidualAccumulator(["a"]).update("zz", torch.zeros(3))),
    ("LoopedBlockWrapper embed_dim=True", "embed_dim", lambda: cc.LoopedBlockWrapper(torch.nn.Identity(), 0, 2, True)),
]


@pytest.mark.parametrize("name,module,call", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_canvas_error_naming_the_module(name, module, call):
    with pytest.raises(CanvasError) as info:
        call()
    assert module in str(info.value), str(info.value)


def test_matching_dtype_after_conversion_runs():
    layer = attention().double()
    assert layer(X.double()).dtype == torch.float64
    assert attention()(X, active_regions=["a"]).shape == X.shape  # a list of names is fine
