"""The cache of active_regions executors: a layer pickled when it was a plain dict still runs, and
threads evicting each other's entries (a bound of 1) neither fail nor leave it above its bound."""

from __future__ import annotations

import io
import threading

import torch

import canvas_core as cc
from canvas_core.runtime.lru import LRUCache

torch.set_num_threads(1)

LAYOUT = cc.CanvasLayout(T=1, H=3, W=2, d_model=8, regions={
    "r0": (0, 1, 0, 1, 0, 2), "r1": (0, 1, 1, 2, 0, 2), "r2": (0, 1, 2, 3, 0, 2)})
TOPOLOGY = cc.CanvasTopology(connections=[cc.Connection(a, b) for a in LAYOUT.regions for b in LAYOUT.regions])


def _layer() -> cc.CanvasAttention:
    torch.manual_seed(0)
    return cc.CanvasAttention(TOPOLOGY, LAYOUT, n_heads=2)


def test_a_layer_pickled_with_a_plain_dict_cache_runs() -> None:
    layer, x = _layer(), torch.randn(1, 6, 8)
    want = layer(x, active_regions={"r0", "r1"})
    layer._restricted = dict(layer._restricted)  # what an older version pickled
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    old = torch.load(buf, weights_only=False)
    assert torch.equal(old(x, active_regions={"r0", "r1"}), want)
    old(x, active_regions={"r2"})
    assert type(old._restricted) is LRUCache and len(old._restricted) == 2


def test_threads_sharing_a_cache_of_one_do_not_fail() -> None:
    layer, x = _layer(), torch.randn(1, 6, 8)
    layer.max_restricted = 1
    sets = [{"r0", "r1"}, {"r1", "r2"}, {"r0"}, {"r2"}]
    errors = []

    def run(k: int) -> None:
        try:
            for i in range(60):
                with torch.no_grad():
                    layer(x, active_regions=sets[(k + i) % len(sets)])
        except Exception as exc:  # pragma: no cover - what the test looks for
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(layer._restricted) <= 1


def test_lru_touch_and_trim_of_missing_entries() -> None:
    c = LRUCache(a=1, b=2, c=3)
    c.touch("a")
    c.touch("gone")
    assert list(c) == ["b", "c", "a"]
    c.trim(1)
    assert list(c) == ["a"]
    c.trim(5)
    assert list(c) == ["a"]


def test_a_pickled_layer_names_no_new_class_for_its_cache() -> None:
    """Older canvas-core has no runtime.lru: the cache pickles as the OrderedDict it knew."""
    import pickle

    layer, x = _layer(), torch.randn(1, 6, 8)
    layer(x, active_regions={"r0"})
    data = pickle.dumps(layer)
    assert b"canvas_core.runtime.lru" not in data
    back = pickle.loads(data)
    assert torch.equal(back(x, active_regions={"r0"}), layer(x, active_regions={"r0"}))
