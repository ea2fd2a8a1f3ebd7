"""Pictures of a canvas: the region layout frame by frame, and the topology as a graph.

``draw_schema(schema, path)`` writes a PNG with matplotlib (the ``draw`` extra). Nothing here is
needed at runtime; matplotlib is imported only when drawing.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from canvas_core.errors import CanvasError, CanvasTypeError
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology

__all__ = ["draw_schema", "check_picture_width", "frames_drawn", "graph_subset", "graph_sizes", "labels_shown", "MAX_WIDTH", "DPI_MIN", "frame_grid", "region_labels", "topology_arrows", "Arrow", "RegionLabel"]

_FN_COLORS = {
    "cross_attention": "#1f77b4", "linear_attention": "#17becf", "cosine_attention": "#aec7e8",
    "sigmoid_attention": "#9edae5", "gated": "#d62728", "perceiver": "#9467bd", "pooling": "#8c564b",
    "copy": "#7f7f7f", "mamba": "#2ca02c", "rwkv": "#98df8a", "hyena": "#bcbd22",
    "sparse_attention": "#ff7f0e", "local_attention": "#ffbb78", "none": "#c7c7c7",
    "random_fixed": "#c49c94", "mixture": "#e377c2",
}


def frame_grid(layout: CanvasLayout, t: int):
    """Region id per spatial cell at frame ``t`` as a 2-d list (``-1`` = uncovered).

    1-d canvases become one row; 3-d and higher fold the trailing dimensions into columns.
    """
    return frame_array(layout, t).tolist()


def frame_array(layout: CanvasLayout, t: int) -> np.ndarray:
    """:func:`frame_grid` as an ``(rows, cols)`` int64 array.  A region's runs are contiguous flat
    ranges of the frame, so each is written as one slice (a Python loop per cell took 47 s on a
    4096 x 4096 canvas); a later region overwrites an earlier one, as before."""
    shape = layout.spatial_shape or (1,)
    rows = shape[0] if len(shape) >= 2 else 1
    cols = math.prod(shape[1:]) if len(shape) >= 2 else shape[0]
    grid = np.full(rows * cols, -1, dtype=np.int64)
    base = t * layout.spatial_volume
    for rid, name in enumerate(layout.region_names):
        for start, stop in layout.region_runs(name, t):
            grid[start - base:stop - base] = rid
    return grid.reshape(rows, cols)


@dataclass(frozen=True)
class RegionLabel:
    """Where a region's name goes on a frame panel: at ``(x, y)`` (column, row, in cells), the
    full name when ``inline`` (the region is large enough there), else its legend number."""

    name: str
    number: int
    x: float
    y: float
    inline: bool

    @property
    def text(self) -> str:
        return self.name if self.inline else str(self.number)


def region_labels(layout: CanvasLayout, t: int, *, min_cells_per_char: float = 0.6) -> List[RegionLabel]:
    """One label per region present at frame ``t``, on the region's cell nearest its centroid.

    A region gets its name inline when its widest row is at least ``min_cells_per_char`` cells
    per character of the name (or it has several rows and enough cells); otherwise it gets its
    legend number, and the legend lists ``number: name``.  Numbers start at 1 in region order.
    """
    return _labels_of(frame_array(layout, t), layout.region_names, min_cells_per_char)


def _labels_of(grid: np.ndarray, names: List[str], min_cells_per_char: float) -> List[RegionLabel]:
    """:func:`region_labels` of a frame's ``(rows, cols)`` region ids, per region at once: cell
    counts, centroids, widest rows and the cell nearest the centroid (ties: the first in row-major
    order, i.e. the smallest ``(row, col)``) by array reductions, not Python loops over cells."""
    rows = grid.shape[0]
    rr, cc = np.nonzero(grid >= 0)  # row-major, the order the cells were listed in
    ids = grid[rr, cc]
    n = len(names)
    count = np.bincount(ids, minlength=n)
    present = count > 0
    safe = np.maximum(count, 1)
    cy = np.bincount(ids, weights=rr, minlength=n) / safe  # sums of ints: exact, as sum() / len()
    cx = np.bincount(ids, weights=cc, minlength=n) / safe
    d = (rr - cy[ids]) ** 2 + (cc - cx[ids]) ** 2
    nearest = np.full(n, np.inf)
    np.minimum.at(nearest, ids, d)
    cand = np.flatnonzero(d == nearest[ids])
    first_ids, at = np.unique(ids[cand], return_index=True)  # the first candidate of each region
    pick = np.zeros(n, dtype=np.int64)
    pick[first_ids] = cand[at]
    key = ids * rows + rr  # (region, row): the cells a region has in a row
    if n * rows <= 1 << 24:
        width = np.bincount(key, minlength=n * rows).reshape(n, rows).max(axis=1, initial=0)
    else:  # too many (region, row) pairs for a table: count the ones present
        per_row, row_counts = np.unique(key, return_counts=True)
        width = np.zeros(n, dtype=np.int64)
        np.maximum.at(width, per_row // rows, row_counts)
    labels = []
    for rid in np.flatnonzero(present).tolist():
        name = names[rid]
        y, x = int(rr[pick[rid]]), int(cc[pick[rid]])
        inline = int(width[rid]) >= min_cells_per_char * len(name) and int(count[rid]) >= 2
        labels.append(RegionLabel(name, rid + 1, x, y, inline))
    return labels


_LEGEND_MAX = 48  # region entries listed in the legend at most (the rest are counted)


#: region labels drawn on one frame panel at most (thousands take minutes and cover the panel)
FRAME_LABELS_MAX = 200


def labels_shown(labels: List[RegionLabel], n_regions: int) -> List[RegionLabel]:
    """The labels a frame panel draws: the names drawn inline and the numbers the legend lists (all
    of them up to ``_LEGEND_MAX`` regions, else the first ones: a number nobody can look up is not
    drawn), in region order, at most :data:`FRAME_LABELS_MAX` (the panel's title says how many)."""
    listed = n_regions if n_regions <= _LEGEND_MAX else _LEGEND_MAX - 1
    return [lab for lab in labels if lab.inline or lab.number <= listed][:FRAME_LABELS_MAX]


def _short(name: str, limit: int = 28) -> str:
    """``name`` cut to ``limit`` characters for the picture (legend, graph nodes)."""
    return name if len(name) <= limit else name[:limit - 3] + "..."


def _offset_label(c) -> str:
    if c.t_src is None and c.t_dst is None:
        return ""
    if c.t_src is not None and c.t_dst is not None:
        d = c.t_dst - c.t_src
        return "same frame" if d == 0 else f"frame {d:+d}"
    return f"src t={c.t_src}" if c.t_dst is None else f"dst t={c.t_dst}"


@dataclass(frozen=True)
class Arrow:
    """One arrow of the topology graph: every connection from ``src`` to ``dst`` with the same
    fn type and temporal offsets.  ``label`` names the offsets ("" for all frames); ``rank``
    separates arrows between the same two regions (0, 1, ...) so none is drawn over another."""

    src: str
    dst: str
    fn: str
    label: str
    temporal: bool
    weight: float
    rank: int
    count: int


def topology_arrows(topology: CanvasTopology, layout: CanvasLayout) -> List[Arrow]:
    """The arrows :func:`draw_schema` draws: connections grouped by (src, dst, fn, offsets), so a
    same-frame and a previous-frame link between the same regions are two labelled arrows."""
    groups: Dict[Tuple, List] = {}
    for c in topology.connections:
        key = (c.src, c.dst, topology.resolve_fn(c, layout), c.t_src, c.t_dst)
        groups.setdefault(key, []).append(c)
    ranks: Dict[Tuple[str, str], int] = {}
    arrows = []
    for (src, dst, fn, _, _), conns in groups.items():
        rank = ranks.get((src, dst), 0)
        ranks[(src, dst)] = rank + 1
        c = conns[0]
        arrows.append(Arrow(src, dst, fn, _offset_label(c), c.is_temporal, max(x.weight for x in conns),
                            rank, len(conns)))
    return arrows


#: widest picture drawn by default, in pixels (the height is bounded by the layout of the figure)
MAX_WIDTH = 16384
#: the most ``max_width`` may be raised to: a wider raster costs gigabytes of memory to render
#: (700 frames, 170,000 pixels: 0.8 GB) and no viewer shows it whole
WIDTH_CEILING = 65536
#: the lowest resolution ``draw_schema`` accepts (dots per inch); the width cap bounds the highest
DPI_MIN = 10
#: regions drawn at most in the topology graph (the most connected ones; the graph says so): more
#: names around the circle of its panel overlap
GRAPH_MAX_NODES = 24
_PANEL_W, _MARGIN_W, _TOPO_PANELS = 2.2, 1.5, 3  # inches per frame panel, margin; topology panels


def frames_drawn(T: int, max_frames: int) -> List[int]:
    """The frames a drawing shows: all of ``0..T-1``, or ``max_frames`` of them evenly spaced."""
    frames = list(range(T))
    if max_frames == 1:
        return [0]
    if len(frames) > max_frames:
        step = (T - 1) / (max_frames - 1)
        frames = sorted({round(i * step) for i in range(max_frames)})
    return frames


def check_picture_width(n_frames: int, with_topology: bool, dpi: int, max_width: int,
                        options: Tuple[str, str] = ("max_frames", "max_width")) -> int:
    """The width in pixels of a drawing of ``n_frames`` frame panels; a ``CanvasError`` naming
    ``options`` (the frame count and the width cap, as the caller spells them) when it is wider
    than ``max_width``, before anything is drawn."""
    if isinstance(max_width, bool) or not isinstance(max_width, int) or max_width < 1:
        raise CanvasError(f"draw_schema: {options[1]} must be an int >= 1 (pixels), got {max_width!r}")
    if max_width > WIDTH_CEILING:
        raise CanvasError(f"draw_schema: {options[1]}={max_width:,} is over the ceiling of {WIDTH_CEILING:,} "
                          f"pixels (rendering wider costs gigabytes); draw fewer frames with {options[0]}, "
                          "or several pictures; nothing was drawn")
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not DPI_MIN <= dpi < math.inf:
        # below ~10 dpi the small labels are under one pixel, which FreeType refuses ("invalid ppem")
        raise CanvasError(f"draw_schema: dpi must be a number > 0 and at least {DPI_MIN} dots per inch (e.g. 110), "
                          f"got {dpi!r}; nothing was drawn")
    topo = _TOPO_PANELS if with_topology else 0
    width = round((_PANEL_W * (n_frames + topo) + _MARGIN_W) * dpi)
    if width > max_width:
        fit = max(0, math.floor((max_width / dpi - _MARGIN_W) / _PANEL_W) - topo)
        fewer = (f"draw at most {fit} frames ({options[0]}={fit})" if fit >= 1
                 else f"no frame fits in {max_width:,} pixels at {dpi} dpi")
        raise CanvasError(
            f"the picture of {n_frames} frames would be {width:,} pixels wide, over the cap of {max_width:,} "
            f"({options[1]}); {fewer}, or raise {options[1]} if you really want a picture that wide; "
            "nothing was drawn")
    return width


def graph_subset(names: List[str], arrows: List[Arrow], max_nodes: int = GRAPH_MAX_NODES
                 ) -> Tuple[List[str], List[Arrow], str]:
    """``(regions, arrows, note)`` the topology graph draws: every region when there are at most
    ``max_nodes``, else the ``max_nodes`` with the most arrows (ties: region order), kept in
    region order, with only the arrows between them; ``note`` says what was left out ("" if nothing)."""
    if len(names) <= max_nodes:
        return list(names), list(arrows), ""
    degree: Counter = Counter()
    for a in arrows:
        degree[a.src] += 1
        degree[a.dst] += 1
    order = {n: i for i, n in enumerate(names)}
    keep = set(sorted(names, key=lambda n: (-degree[n], order[n]))[:max_nodes])
    kept = [a for a in arrows if a.src in keep and a.dst in keep]
    note = (f"{max_nodes} of {len(names):,} regions (the most connected), "
            f"{len(kept):,} of {len(arrows):,} arrows")
    return [n for n in names if n in keep], kept, note


def graph_sizes(n_nodes: int) -> Tuple[float, float]:
    """``(node diameter, label font size)`` in points for a topology graph of ``n_nodes`` around
    its circle (radius 1, about 0.9 inch per unit): nodes no wider than 60 % of the gap between
    neighbours, so they never overlap, and smaller names when there are many."""
    gap = 2 * math.sin(math.pi / max(2, n_nodes)) * 0.9 * 72
    return min(20.0, 0.6 * gap), 8.0 if n_nodes <= 12 else 6.0


def _literal(legend):
    """Draw the entries of a matplotlib legend as written (no mathtext: a ``$`` pair in a name
    would otherwise be typeset as a formula)."""
    for text in legend.get_texts():
        text.set_parse_math(False)
    return legend


def draw_schema(
    schema: Union[CanvasSchema, CanvasLayout],
    path: Union[str, Path],
    *,
    topology: Optional[CanvasTopology] = None,
    title: Optional[str] = None,
    max_frames: int = 8,
    dpi: int = 110,
    max_width: int = MAX_WIDTH,
) -> Path:
    """Draw the layout (one panel per frame, regions coloured and labelled) and the topology
    graph to a PNG.

    Frame panels keep the canvas's aspect ratio (one cell is a square).  Every region is named:
    inline where it fits, otherwise by a number that the legend below explains.  Connections
    that differ in fn type or temporal offsets are separate arrows, labelled with their offset.
    Names (regions, fn types, ``title``) are drawn exactly as written: a ``$...$`` in a name is
    not typeset as mathtext, and ``rcParams["text.usetex"]`` is off while drawing.

    Args:
        schema: a ``CanvasSchema`` (or a bare ``CanvasLayout`` plus ``topology=``).
        path: the picture to write (``.png``, ``.svg``, ``.pdf``, or another format matplotlib
            writes; no suffix is a PNG); its folder must exist and the format be known (a
            ``CanvasError`` before anything is drawn, as for every writer of the package).
        max_frames: frames drawn at most (evenly spaced when the canvas has more).
        max_width: widest picture allowed, in pixels: a wider one (many frames) is refused with
            a ``CanvasError`` saying how many frames fit, before anything is drawn; at most
            ``WIDTH_CEILING`` (65,536).
    Returns:
        The path written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.backend_bases import FigureCanvasBase
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import FancyArrowPatch, Patch
    except ImportError as exc:  # pragma: no cover - matplotlib is a declared extra
        raise CanvasError(f"drawing needs matplotlib: pip install 'canvas-core[draw]' ({exc})") from None
    if isinstance(schema, CanvasLayout):
        layout, topo = schema, topology
    elif isinstance(schema, CanvasSchema):
        layout, topo = schema.layout, topology or schema.topology
    else:
        raise CanvasTypeError(f"draw_schema expects a CanvasSchema or CanvasLayout, got {type(schema).__name__}")

    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise CanvasError(f"draw_schema: max_frames must be an int >= 1, got {max_frames!r}")
    names = list(layout.region_names)
    base = plt.get_cmap("tab20")
    colors = [base(i % 20) for i in range(len(names))]
    cmap = ListedColormap([(0.95, 0.95, 0.95, 1.0)] + colors)
    frames = frames_drawn(layout.T, max_frames)
    check_picture_width(len(frames), topo is not None, dpi, max_width)
    from canvas_core._safe_write import check_write_target

    check_write_target(path, "picture")  # before drawing: a missing folder, a directory, a FIFO ...
    fmt = Path(path).suffix[1:].lower() or "png"  # the temporary file written has no telling suffix
    formats = FigureCanvasBase.get_supported_filetypes()
    if fmt not in formats:
        raise CanvasError(f"cannot draw to {str(path)!r}: matplotlib cannot write {fmt!r} pictures; give a name "
                          f"ending in one of {', '.join('.' + f for f in sorted(formats))} (e.g. .png); "
                          "nothing was drawn")

    grid0 = frame_grid(layout, 0)
    n_rows, n_cols_cells = len(grid0), len(grid0[0])
    panel_w = _PANEL_W
    panel_h = max(0.5, min(6.0, panel_w * n_rows / n_cols_cells))  # a cell is a square
    topo_units = _TOPO_PANELS if topo is not None else 0
    fig_w = panel_w * (len(frames) + topo_units) + _MARGIN_W
    legend_cols = max(1, min(6, int(fig_w // 2.2)))  # about 2.2 in per legend column
    legend_rows = math.ceil(min(len(names), _LEGEND_MAX) / legend_cols)
    legend_h = 0.2 * legend_rows + 0.3
    fig_h = max(panel_h, 3.2 if topo is not None else 0) + 1.6 + legend_h
    # every user-given name (regions, fn types, the title) is drawn as written: never through
    # LaTeX (whatever the user's rcParams say) and never as mathtext (parse_math=False), so
    # '$x^2$ cost' shows its dollars and '_', '%', '\\' need no escaping
    with matplotlib.rc_context({"text.usetex": False}):
        fig = plt.figure(figsize=(fig_w, fig_h))
        gs = fig.add_gridspec(1, len(frames) + topo_units)
        numbered = set()
        for k, t in enumerate(frames):
            ax = fig.add_subplot(gs[0, k])
            ids = frame_array(layout, t)
            ax.imshow(ids + 1, cmap=cmap, vmin=0, vmax=len(names), interpolation="nearest", aspect="equal")
            labels = _labels_of(ids, list(layout.region_names), 0.6)
            shown = labels_shown(labels, len(names))
            for lab in shown:
                if not lab.inline:
                    numbered.add(lab.name)
                ax.text(lab.x, lab.y, lab.text, ha="center", va="center", fontsize=7 if lab.inline else 6,
                        color="black", parse_math=False, bbox=None if lab.inline else dict(boxstyle="circle,pad=0.15", fc="white",
                                                                          ec="black", lw=0.4))
            marker = " (out)" if t >= layout.t_current and layout.t_current > 0 else ""
            cut = f"\n{len(shown)} of {len(labels):,} regions labelled" if len(shown) < len(labels) else ""
            ax.set_title(f"t={t}{marker}{cut}", fontsize=7 if cut else 9)
            ax.set_xticks([])
            ax.set_yticks([])
        handles = [Patch(color=colors[i], label=(f"{i + 1}: " if n in numbered else "") + f"{_short(n)} ({layout.region_numel(n)})")
                   for i, n in enumerate(names)]
        if len(handles) > _LEGEND_MAX:  # a legend of thousands of entries would cover the picture
            more = len(handles) - _LEGEND_MAX + 1
            handles = handles[:_LEGEND_MAX - 1] + [Patch(color="white", label=f"... and {more} more regions")]
        _literal(fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), legend_cols), fontsize=8,
                            frameon=False))

        if topo is not None:
            ax = fig.add_subplot(gs[0, len(frames):])
            # thousands of nodes take minutes to draw and cannot be told apart: a subset, said so
            nodes, arrows, note = graph_subset(names, topology_arrows(topo, layout))
            ax.set_title("topology (src reads dst)" + (f"\n{note}" if note else ""), fontsize=9 if not note else 7)
            ax.axis("off")
            pos = {n: (math.cos(2 * math.pi * i / max(1, len(nodes))), math.sin(2 * math.pi * i / max(1, len(nodes))))
                   for i, n in enumerate(nodes)}
            node_pt, name_pt = graph_sizes(len(nodes))
            used_fns = {}
            per_pair: Dict[Tuple[str, str], int] = {}
            for a in arrows:
                per_pair[(a.src, a.dst)] = per_pair.get((a.src, a.dst), 0) + 1
            for a in arrows:
                color = _FN_COLORS.get(a.fn, "#333333")
                used_fns[a.fn] = color
                (x0, y0), (x1, y1) = pos[a.src], pos[a.dst]
                style = "dashed" if a.temporal else "solid"
                if a.src == a.dst:
                    size = 0.08 + 0.07 * a.rank
                    ax.add_patch(FancyArrowPatch((x0 - size, y0 + 0.1), (x0 + size, y0 + 0.1),
                                                 connectionstyle="arc3,rad=-1.6", arrowstyle="-|>",
                                                 mutation_scale=8, color=color, linestyle=style, lw=1))
                    lx, ly = x0, y0 + 0.22 + 1.4 * size
                else:
                    rad = 0.15 + 0.3 * a.rank
                    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), connectionstyle=f"arc3,rad={rad}",
                                                 arrowstyle="-|>", mutation_scale=10, color=color,
                                                 linestyle=style, lw=0.6 + 1.2 * min(a.weight, 2.0),
                                                 shrinkA=node_pt / 2 + 2, shrinkB=node_pt / 2 + 2))
                    # the arc's midpoint: the chord's midpoint moved along its normal by rad * length / 2
                    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
                    lx, ly = mx + rad * (y1 - y0) / 2, my - rad * (x1 - x0) / 2
                # an all-frames arrow beside others between the same regions is labelled too
                label = a.label or ("all frames" if per_pair[(a.src, a.dst)] > 1 else "")
                if label:
                    ax.text(lx, ly, label, fontsize=6, color=color, ha="center", va="center", parse_math=False,
                            bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
            for i, n in enumerate(names):
                if n not in pos:
                    continue
                x, y = pos[n]
                ax.scatter([x], [y], s=node_pt ** 2, color=colors[i], zorder=3, edgecolors="black", linewidths=0.5)
                if len(nodes) <= 8:
                    ax.text(x, y - 0.24, _short(n), ha="center", va="top", fontsize=name_pt, parse_math=False)
                else:  # many nodes: each name outside the circle, beside its node, away from its neighbours'
                    side = "left" if x > 0.2 else "right" if x < -0.2 else "center"
                    ax.text(1.14 * x, 1.14 * y, _short(n, 20), ha=side, va="center", fontsize=name_pt,
                            parse_math=False)
            ax.set_xlim(-1.6, 1.6)
            ax.set_ylim(-1.6, 1.6)
            ax.set_aspect("equal")
            _literal(ax.legend(handles=[Patch(color=col, label=fn) for fn, col in used_fns.items()],
                               loc="upper left", bbox_to_anchor=(0.98, 1.0), fontsize=7, frameon=False,
                               title="fn (dashed = temporal)", title_fontsize=7))

        dims = "x".join(str(d) for d in (layout.T, *layout.spatial_shape))
        fig.suptitle(title or f"canvas {dims}  N={layout.num_positions}  d_model={layout.d_model}", fontsize=11,
                     parse_math=False)
        fig.tight_layout(rect=(0, min(0.8, legend_h / fig_h), 0.93 if topo is not None else 1, 0.95))
        out = Path(path)
        from canvas_core._safe_write import atomic_write

        try:  # atomic; a FIFO / device / directory target is refused (CanvasError), never replaced
            atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt), "picture")
        finally:
            plt.close(fig)
    return out
