"""canvas draw on layouts found hard in the audit: an all-frames arrow beside a frame -1 arrow is
labelled, a legend of a thousand regions is capped and does not cover the frames, long region
names are shortened."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection  # noqa: E402
from canvas_core.viz import draw_schema  # noqa: E402


def _record(monkeypatch):
    seen = {"text": [], "legend": []}
    real_text, real_legend = Axes.text, Figure.legend

    def text(self, x, y, s, *a, **k):
        seen["text"].append(s)
        return real_text(self, x, y, s, *a, **k)

    def legend(self, *a, handles=None, **k):
        seen["legend"].append([h.get_label() for h in handles])
        return real_legend(self, *a, handles=handles, **k)

    monkeypatch.setattr(Axes, "text", text)
    monkeypatch.setattr(Figure, "legend", legend)
    return seen


def test_all_frames_arrow_beside_an_offset_arrow_is_labelled(tmp_path, monkeypatch):
    seen = _record(monkeypatch)
    layout = CanvasLayout(T=3, spatial_shape=(1, 1), d_model=4, regions={"a": (0, 3, 0, 1, 0, 1)})
    topo = CanvasTopology(connections=[Connection("a", "a", t_src=0, t_dst=-1), Connection("a", "a")])
    draw_schema(CanvasSchema(layout=layout, topology=topo), tmp_path / "one.png")
    assert "all frames" in seen["text"] and "frame -1" in seen["text"]


def test_alone_an_all_frames_arrow_stays_unlabelled(tmp_path, monkeypatch):
    seen = _record(monkeypatch)
    layout = CanvasLayout(T=2, spatial_shape=(1, 2), d_model=4, regions={"a": (0, 2, 0, 1, 0, 1), "b": (0, 2, 0, 1, 1, 2)})
    draw_schema(CanvasSchema(layout=layout, topology=CanvasTopology(connections=[Connection("a", "b")])),
                tmp_path / "two.png")
    assert "all frames" not in seen["text"]


def test_a_thousand_regions_give_a_capped_legend_and_long_names_are_cut(tmp_path, monkeypatch):
    seen = _record(monkeypatch)
    regions = {f"r{i}": (0, 1, i // 32, i // 32 + 1, i % 32, i % 32 + 1) for i in range(1023)}
    regions["x" * 80] = (0, 1, 31, 32, 31, 32)
    layout = CanvasLayout(T=1, spatial_shape=(32, 32), d_model=4, regions=regions)
    out = draw_schema(CanvasSchema(layout=layout), tmp_path / "many.png")
    assert out.exists()
    (labels,) = seen["legend"]
    assert len(labels) == 48 and labels[-1] == "... and 977 more regions"
    small = CanvasLayout(T=1, spatial_shape=(1, 2), d_model=4, regions={"x" * 80: (0, 1, 0, 1, 0, 2)})
    draw_schema(CanvasSchema(layout=small), tmp_path / "long.png")
    assert all(len(s) < 50 for s in seen["legend"][-1])
