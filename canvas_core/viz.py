"""Pictures of a canvas: the region layout frame by frame, and the topology as a graph.

``draw_schema(schema, path)`` writes a PNG with matplotlib (the ``draw`` extra). Nothing here is
needed at runtime; matplotlib is imported only when drawing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

from canvas_core.errors import CanvasError, CanvasTypeError
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology

__all__ = ["draw_schema", "frame_grid"]

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
    shape = layout.spatial_shape or (1,)
    rows = shape[0] if len(shape) >= 2 else 1
    cols = math.prod(shape[1:]) if len(shape) >= 2 else shape[0]
    grid = [[-1] * cols for _ in range(rows)]
    for rid, name in enumerate(layout.region_names):
        for start, stop in layout.region_runs(name, t):
            for flat in range(start, stop):
                local = flat - t * layout.spatial_volume
                r, c = divmod(local, cols)
                grid[r][c] = rid
    return grid


def draw_schema(
    schema: Union[CanvasSchema, CanvasLayout],
    path: Union[str, Path],
    *,
    topology: Optional[CanvasTopology] = None,
    title: Optional[str] = None,
    max_frames: int = 8,
    dpi: int = 110,
) -> Path:
    """Draw the layout (one panel per frame, regions coloured) and the topology graph to a PNG.

    Args:
        schema: a ``CanvasSchema`` (or a bare ``CanvasLayout`` plus ``topology=``).
        path: output PNG path.
        max_frames: frames drawn at most (evenly spaced when the canvas has more).
    Returns:
        The path written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
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
    frames = list(range(layout.T))
    if max_frames == 1:
        frames = [0]
    elif len(frames) > max_frames:
        step = (layout.T - 1) / (max_frames - 1)
        frames = sorted({round(i * step) for i in range(max_frames)})

    n_cols = len(frames) + (3 if topo is not None else 0)
    fig = plt.figure(figsize=(1.9 * n_cols + 1.5, 4.2))
    gs = fig.add_gridspec(1, n_cols)
    for k, t in enumerate(frames):
        ax = fig.add_subplot(gs[0, k])
        grid = [[v + 1 for v in row] for row in frame_grid(layout, t)]
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=len(names), interpolation="nearest", aspect="auto")
        marker = " (out)" if t >= layout.t_current and layout.t_current > 0 else ""
        ax.set_title(f"t={t}{marker}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(color=colors[i], label=f"{n} ({layout.region_numel(n)})") for i, n in enumerate(names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(names), 6), fontsize=8, frameon=False)

    if topo is not None:
        ax = fig.add_subplot(gs[0, len(frames):])
        ax.set_title("topology (src reads dst)", fontsize=9)
        ax.axis("off")
        pos = {n: (math.cos(2 * math.pi * i / max(1, len(names))), math.sin(2 * math.pi * i / max(1, len(names))))
               for i, n in enumerate(names)}
        used_fns = {}
        for c in topo.connections:
            fn = topo.resolve_fn(c, layout)
            color = _FN_COLORS.get(fn, "#333333")
            used_fns[fn] = color
            (x0, y0), (x1, y1) = pos[c.src], pos[c.dst]
            style = "dashed" if c.is_temporal else "solid"
            if c.src == c.dst:
                ax.add_patch(FancyArrowPatch((x0 - 0.08, y0 + 0.1), (x0 + 0.08, y0 + 0.1),
                                             connectionstyle="arc3,rad=-1.6", arrowstyle="-|>",
                                             mutation_scale=8, color=color, linestyle=style, lw=1))
            else:
                ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), connectionstyle="arc3,rad=0.15",
                                             arrowstyle="-|>", mutation_scale=10, color=color,
                                             linestyle=style, lw=0.6 + 1.2 * min(c.weight, 2.0),
                                             shrinkA=14, shrinkB=14))
        for i, n in enumerate(names):
            x, y = pos[n]
            ax.scatter([x], [y], s=420, color=colors[i], zorder=3, edgecolors="black", linewidths=0.5)
            ax.text(x, y - 0.24, n, ha="center", va="top", fontsize=8)
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(-1.5, 1.5)
        ax.legend(handles=[Patch(color=col, label=fn) for fn, col in used_fns.items()],
                  loc="upper left", bbox_to_anchor=(0.98, 1.0), fontsize=7, frameon=False,
                  title="fn (dashed = temporal)",
                  title_fontsize=7)

    dims = "x".join(str(d) for d in (layout.T, *layout.spatial_shape))
    fig.suptitle(title or f"canvas {dims}  N={layout.num_positions}  d_model={layout.d_model}", fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 0.93 if topo is not None else 1, 0.95))
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi)
    except OSError as exc:
        raise CanvasError(f"cannot write picture to {str(out)!r}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out
