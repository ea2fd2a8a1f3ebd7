"""canvas draw / canvas_core.viz: region grids against brute force, real PNGs, clear errors."""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings

from canvas_core import CanvasError
from canvas_core.schema import CanvasSchema, CanvasTopology, Connection
from canvas_core.viz import draw_schema, frame_grid

from tests.schema.strategies import layouts


@settings(max_examples=40, deadline=None)
@given(layouts(max_dims=3))
def test_frame_grid_matches_region_at(layout):
    names = list(layout.region_names)
    for t in range(layout.T):
        grid = frame_grid(layout, t)
        flat_cells = [v for row in grid for v in row]
        assert len(flat_cells) == layout.spatial_volume
        for local, rid in enumerate(flat_cells):
            owners = layout.region_at(t * layout.spatial_volume + local)
            assert (names[rid] in owners) if rid >= 0 else not owners


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_draw_schema_writes_png(tmp_path):
    from tests.schema.test_layout import seed_layout

    layout = seed_layout()
    topo = CanvasTopology([Connection("visual", "visual"), Connection("action", "visual", t_src=0, t_dst=-1),
                           Connection("reward", "action", fn="gated")])
    out = draw_schema(CanvasSchema(layout, topo), tmp_path / "x.png")
    w, h = png_size(out)
    assert w > 400 and h > 200
    with pytest.raises(CanvasError):
        draw_schema("not a schema", tmp_path / "y.png")


def test_cli_draw_bundled_example(tmp_path):
    out = tmp_path / "robot.png"
    proc = subprocess.run([sys.executable, "-m", "canvas_core.cli", "draw", "example", "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert png_size(out)[0] > 400


def test_cli_draw_missing_file_is_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "canvas_core.cli", "draw", str(tmp_path / "nope.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_max_frames_one_and_bad_values(tmp_path):
    from tests.schema.test_layout import seed_layout

    schema = CanvasSchema(layout=seed_layout(), topology=CanvasTopology([Connection(src="visual", dst="visual")]))
    assert schema.layout.T > 1
    assert png_size(draw_schema(schema, tmp_path / "one.png", max_frames=1))[0] > 100
    for bad in (0, -2, 1.5, True):
        with pytest.raises(CanvasError, match="max_frames must be an int >= 1"):
            draw_schema(schema, tmp_path / "bad.png", max_frames=bad)


def test_cli_draw_unwritable_output_is_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the output folder should be
    proc = subprocess.run([sys.executable, "-m", "canvas_core.cli", "draw", "example", "-o",
                           str(blocker / "sub" / "x.png")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot write picture" in proc.stderr and "Traceback" not in proc.stderr


def _long_schema(T=300):
    from canvas_core.schema import CanvasLayout

    layout = CanvasLayout(T=T, H=4, W=4, d_model=8, regions={"a": (0, T, 0, 2, 0, 4), "b": (0, T, 2, 4, 0, 4)})
    return CanvasSchema(layout=layout, topology=CanvasTopology([Connection("a", "b")]))


def test_draw_width_is_capped_and_the_picture_keeps_the_predicted_width(tmp_path):
    """Many frames used to give a picture of any width (300 frames: ~80,000 pixels); a drawing
    wider than ``max_width`` is refused before anything is written, saying how many frames fit,
    and at the frames that fit the picture is as wide as predicted (under the cap)."""
    from canvas_core.viz import MAX_WIDTH, check_picture_width

    schema = _long_schema()
    out = tmp_path / "long.png"
    with pytest.raises(CanvasError, match=r"300 frames would be .* pixels wide, over the cap of 16,384 "
                                          r"\(max_width\); draw at most (\d+) frames \(max_frames=\1\)") as err:
        draw_schema(schema, out, max_frames=300)
    assert not out.exists()
    fit = int(err.value.args[0].split("draw at most ")[1].split()[0])
    w, _ = png_size(draw_schema(schema, out, max_frames=fit))
    assert w == check_picture_width(fit, True, 110, MAX_WIDTH) and w <= MAX_WIDTH
    with pytest.raises(CanvasError, match="over the cap"):
        check_picture_width(fit + 1, True, 110, MAX_WIDTH)
    # raising the cap is the other way out
    assert png_size(draw_schema(schema, out, max_frames=fit + 2, max_width=MAX_WIDTH + 1000))[0] > MAX_WIDTH
    with pytest.raises(CanvasError, match="max_width must be an int >= 1"):
        draw_schema(schema, out, max_width=0)
    # ... but not without bound: 300 frames at 10**9 pixels used to render an 80,000-pixel raster
    with pytest.raises(CanvasError, match=r"max_width=1,000,000,000 is over the ceiling of 65,536 pixels"):
        draw_schema(schema, out, max_frames=300, max_width=10**9)
    assert png_size(out)[0] < 80_000  # the picture drawn before is untouched
    for dpi in ("110", True, 0, float("nan")):  # "110" used to be a TypeError from the width arithmetic
        with pytest.raises(CanvasError, match="dpi must be a number > 0"):
            draw_schema(schema, out, dpi=dpi)


def test_cli_draw_refuses_a_picture_over_the_cap_naming_its_options(tmp_path):
    src = tmp_path / "long.json"
    src.write_text(_long_schema().to_json())
    out = tmp_path / "long.png"
    cli = [sys.executable, "-m", "canvas_core.cli", "draw", str(src), "-o", str(out)]
    proc = subprocess.run(cli + ["--max-frames", "300"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "over the cap of 16,384 (--max-width); draw at most" in proc.stderr and "--max-frames=" in proc.stderr
    assert not out.exists()
    proc = subprocess.run(cli + ["--max-width", "1000"], capture_output=True, text=True)
    assert proc.returncode == 2 and "no frame fits in 1,000 pixels" in proc.stderr
    proc = subprocess.run(cli + ["--max-frames", "300", "--max-width", "99999999"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--max-width=99,999,999 is over the ceiling" in proc.stderr
    assert "--max-frames" in proc.stderr and not out.exists()
    proc = subprocess.run(cli + ["--max-frames", "20"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert png_size(out)[0] <= 16384


def test_draw_schema_refuses_a_missing_folder_before_drawing(tmp_path):
    """Like every other writer (and ``canvas draw``), ``draw_schema`` no longer creates a missing
    folder: a typo in a folder name is a CanvasError naming it, and nothing is created."""
    schema = _long_schema()
    target = tmp_path / "no_such_dir" / "x.png"
    with pytest.raises(CanvasError, match=r"the directory .*no_such_dir' does not exist; create it first"):
        draw_schema(schema, target, max_frames=2)
    assert not (tmp_path / "no_such_dir").exists()
    (tmp_path / "no_such_dir").mkdir()
    assert png_size(draw_schema(schema, target, max_frames=2))[0] > 100
