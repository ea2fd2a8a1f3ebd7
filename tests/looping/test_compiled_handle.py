"""Grafting through the handle ``torch.compile`` returns: the model it holds is grafted with its own
adapter (the CogVideoX adapter loops both streams; a generic one chosen for the wrapper class
looped one and broke the identity at initialisation), and ungrafting works through either
handle."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from canvas_core.errors import BackboneError  # noqa: E402
from canvas_core import ungraft_looped_blocks  # noqa: E402
from canvas_core.looping import get_adapter, graft_looped_blocks  # noqa: E402
from tests.looping._backbone_setup import inputs, make, run  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")


@pytest.mark.parametrize("scope", ["block", "stack"])
@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
def test_grafting_the_compiled_handle_grafts_the_model_with_its_adapter(kind, scope, tmp_path):
    m, kw = make(kind), inputs(kind)
    with torch.no_grad():
        ref = run(kind, m, kw)
    handle = torch.compile(m, backend="eager")
    graft_looped_blocks(handle, max_loops=3, scope=scope)
    assert type(get_adapter(handle)) is type(get_adapter(m)) and get_adapter(m).name == kind
    for n in (1, 3):
        handle_loops = [b for b in m.modules() if hasattr(b, "set_loops")]
        for b in handle_loops:
            b.set_loops(n)
        with torch.no_grad():
            assert torch.equal(run(kind, m, kw), ref) and torch.equal(run(kind, handle, kw), ref)
    if kind != "vit":
        with pytest.raises(BackboneError):  # a grafted diffusers model refuses save_pretrained
            m.save_pretrained(str(tmp_path / "grafted"))
    ungraft_looped_blocks(handle)
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), ref)


def test_ungrafting_through_the_other_handle():
    m = make("vit")
    graft_looped_blocks(m, max_loops=2)
    ungraft_looped_blocks(torch.compile(m, backend="eager"))
    m2 = make("vit")
    graft_looped_blocks(torch.compile(m2, backend="eager"), max_loops=2)
    ungraft_looped_blocks(m2)
    assert not any(type(b).__name__ == "LoopedBlockWrapper" for b in list(m.modules()) + list(m2.modules()))
