"""Write targets found in the audit: a path ending with a separator names a directory and is refused
by every writer (no file named like the directory appears)."""

import os

import pytest

from canvas_core._safe_write import atomic_write_text
from canvas_core.errors import CanvasError
from canvas_core.schema import CanvasLayout, CanvasSchema


@pytest.mark.parametrize("exists", [False, True])
def test_trailing_separator_is_refused_and_nothing_is_created(tmp_path, exists):
    target = tmp_path / "ckpts"
    if exists:
        target.mkdir()
    path = str(target) + os.sep
    with pytest.raises(CanvasError, match="ends with a separator, so it names a directory"):
        atomic_write_text(path, "x", "the test file")
    assert target.is_dir() if exists else not os.path.lexists(target)
    schema = CanvasSchema(layout=CanvasLayout(T=1, spatial_shape=(1, 1), d_model=4, regions={"a": (0, 1, 0, 1, 0, 1)}))
    with pytest.raises(CanvasError, match="names a directory"):
        schema.to_json(path)
    assert target.is_dir() if exists else not os.path.lexists(target)
    assert sorted(os.listdir(tmp_path)) == (["ckpts"] if exists else [])
