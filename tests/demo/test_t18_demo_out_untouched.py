"""A refused ``--pretrained`` load creates no ``--out`` folder (bad input loses and leaves nothing)."""

import pytest

from canvas_core.demo.pipeline import DemoConfig, run_demo
from canvas_core.errors import CanvasError


def _bad_config_dir(tmp_path):
    bad = tmp_path / "bad_ckpt"
    bad.mkdir()
    (bad / "config.json").write_text("not json")
    return bad


@pytest.mark.parametrize("make_path", [lambda p: p / "missing", _bad_config_dir], ids=["missing", "bad-config"])
def test_refused_pretrained_load_creates_no_out_folder(tmp_path, make_path):
    out = tmp_path / "out" / "sub"
    with pytest.raises(CanvasError, match="--pretrained"):
        run_demo(DemoConfig(steps=1, batch_size=2, eval_samples=4, out=out, progress=False,
                            pretrained=make_path(tmp_path)), log=lambda _: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["under-a-file", "is-a-file"])
def test_bad_out_is_refused_before_any_work(tmp_path, where):
    """An --out that can never become a folder is refused by the option checks, before the
    backbone is built: nothing is logged and nothing is created."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    out = blocker / "sub" if where == "under-a-file" else blocker
    said = []
    with pytest.raises(CanvasError, match="--out"):
        run_demo(DemoConfig(steps=1, batch_size=2, eval_samples=4, out=out, progress=False), log=said.append)
    assert said == []
    assert blocker.read_text() == "x"
