"""``draw_schema`` draws every user-given name as written: a region, fn type or title holding a pair
of ``$`` is not typeset as a formula, and the user's ``text.usetex`` setting does not send the
names through LaTeX (where ``_``, ``%`` or ``\\`` would break or change them)."""

from __future__ import annotations

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.cbook import is_math_text  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection  # noqa: E402
from canvas_core.viz import draw_schema  # noqa: E402

NAMES = ["$x^2$ cost", "$\\frac{", "a_b%", "plain"]


def _shown(text: Text):
    """The string a Text artist puts on the picture when drawn literally, else None (it is
    typeset by LaTeX or as mathtext)."""
    s = text.get_text()
    if text.get_usetex():
        return None
    if not text.get_parse_math():
        return s
    return None if is_math_text(s) else s.replace("\\$", "$")


def _draw(tmp_path, monkeypatch, *, title=None, fn=None, rc=None):
    """Draw a schema and return the figure (kept from ``plt.close``) to look at its texts."""
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    layout = CanvasLayout(T=1, H=2, W=len(NAMES), d_model=4,
                          regions={n: (0, 1, 0, 2, i, i + 1) for i, n in enumerate(NAMES)})
    topo = CanvasTopology([Connection(NAMES[0], NAMES[1]), Connection(NAMES[2], NAMES[3], t_src=0, t_dst=0),
                           *([Connection(NAMES[1], NAMES[0], fn=fn)] if fn else [])])
    with matplotlib.rc_context(rc or {}):
        draw_schema(CanvasSchema(layout, topo), tmp_path / "p.png", title=title)
    (fig,) = [f for f in figures if f is not None]
    return fig


def _texts(fig):
    return [t for t in fig.findobj(Text) if t.get_text()]


def test_region_names_appear_literally_in_legend_and_graph(tmp_path, monkeypatch):
    fig = _draw(tmp_path, monkeypatch)
    shown = [_shown(t) for t in _texts(fig)]
    assert None not in shown, [t.get_text() for t in _texts(fig) if _shown(t) is None]
    for name in NAMES:
        in_legend = [s for s in shown if s and s.endswith(f"{name} (2)")]
        in_graph = [s for s in shown if s == name]
        assert in_legend and in_graph, name


def test_a_title_is_drawn_literally(tmp_path, monkeypatch):
    fig = _draw(tmp_path, monkeypatch, title="$\\alpha$ run")
    assert "$\\alpha$ run" in [_shown(t) for t in _texts(fig)]


def test_a_fn_type_name_is_drawn_literally(tmp_path, monkeypatch):
    fig = _draw(tmp_path, monkeypatch, fn="$m$")
    assert "$m$" in [_shown(t) for t in _texts(fig)]


def test_the_users_usetex_setting_does_not_reach_the_names(tmp_path, monkeypatch):
    fig = _draw(tmp_path, monkeypatch, rc={"text.usetex": True})
    shown = [_shown(t) for t in _texts(fig)]
    assert None not in shown
    assert "a_b%" in shown
