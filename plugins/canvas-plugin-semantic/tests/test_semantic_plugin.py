"""canvas-plugin-semantic registers an offline MiniLM embedder through canvas_register_embedders."""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def test_registered_and_embeds_offline():
    from canvas_core.plugins import create_embedder, list_embedders
    names = list_embedders()
    assert "minilm" in (names if not isinstance(names, dict) else names.keys()) or any("minilm" in str(n) for n in names)
    e = create_embedder("minilm")
    v = e.embed(["RGB video", "depth video", "joint angles"])
    assert len(v) == 3 and all(len(x) == 384 for x in v)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    assert abs(dot(v[0], v[0]) - 1) < 1e-4
    assert dot(v[0], v[1]) > dot(v[0], v[2])
    assert e.embed([]) == []
