"""The traced layout check keeps its O(1) guards on a canvas or CanvasAttention that was deep-copied,
pickled or saved with torch.save (the copy's layout relinks its regions' change count, which
survives the copy)."""

from __future__ import annotations

import copy
import io
import pickle
from typing import Any, Callable

import pytest
import torch

from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection, SpatiotemporalCanvas


def _layout(n: int) -> CanvasLayout:
    return CanvasLayout(T=n, d_model=8, spatial_shape=(2,), regions={f"r{i}": (i, i + 1, 0, 2) for i in range(n)})


def _saved(obj: Any) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


CLONES = {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m)), "torch.save": _saved}


def _layout_guards(fn: Callable, x: torch.Tensor) -> int:
    torch._dynamo.reset()
    seen = []

    def keep_all(entries):
        seen.extend(e for e in entries if any(w in e.name for w in ("layout", "_built_from", "regions")))
        return [True] * len(entries)

    with torch.no_grad():
        torch.compile(fn, backend="eager", options={"guard_filter_fn": keep_all})(x)
    return len(seen)


def _canvas_guards(n: int, clone: Callable) -> int:
    torch.manual_seed(0)
    sc = clone(SpatiotemporalCanvas(_layout(n)))
    return _layout_guards(lambda x: sc.extract(x, "r0"), torch.zeros(1, 2 * n, 8))


def _attention_guards(n: int, clone: Callable) -> int:
    torch.manual_seed(0)
    lay = _layout(n)
    topo = CanvasTopology(connections=[Connection(f"r{i}", f"r{i}") for i in range(n)])
    layer = clone(CanvasAttention(topo, lay, n_heads=2))
    return _layout_guards(layer, torch.randn(1, 2 * n, 8))


@pytest.mark.parametrize("clone", list(CLONES.values()), ids=list(CLONES))
def test_canvas_copy_guards_do_not_grow_with_the_regions(clone) -> None:
    assert _canvas_guards(3, clone) == _canvas_guards(24, clone) == _canvas_guards(3, lambda m: m)


@pytest.mark.parametrize("clone", list(CLONES.values()), ids=list(CLONES))
def test_attention_copy_guards_do_not_grow_with_the_regions(clone) -> None:
    assert _attention_guards(3, clone) == _attention_guards(24, clone) == _attention_guards(3, lambda m: m)


def test_region_dict_copy_keeps_its_change_count() -> None:
    lay = _layout(4)
    for clone in CLONES.values():
        again = clone(lay)
        assert again.regions.version == lay.regions.version
        assert again._traced is vars(again.regions)
