"""Mochi's token layout is checked against the model's config: sample shapes it cannot run
(latent channels other than ``in_channels``, text of another width than ``text_embed_dim``, no
frame, a grid that is empty or not whole patches) are refused by ``token_layout`` with both shapes
named, before anything is installed (they installed, then failed at the call with a bare error)."""

from __future__ import annotations

import pytest
import torch
from diffusers import MochiTransformer3DModel

from canvas_core.errors import BackboneError
from canvas_core.looping import get_adapter, graft_looped_blocks
from canvas_core.schema import CanvasLayout, CanvasTopology
from canvas_core.testing import one_thread_fixture

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")

TINY = dict(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=12,
            in_channels=4, text_embed_dim=16, time_embed_dim=8, max_sequence_length=6)
GOOD = {"hidden_states": (2, 4, 2, 8, 8), "encoder_hidden_states": (2, 6, 16)}

_one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def grafted():
    torch.manual_seed(0)
    m = MochiTransformer3DModel(**TINY).eval()
    graft_looped_blocks(m, max_loops=2)
    return m, get_adapter(m)


@pytest.mark.parametrize("key, shape, named", [
    ("hidden_states", (2, 7, 2, 8, 8), "in_channels=4"),      # channels the patch embedding does not take
    ("hidden_states", (2, 4, 0, 8, 8), "at least one frame"),  # no frame
    ("hidden_states", (2, 4, 2, 0, 8), "non-empty grid"),      # no patch row
    ("hidden_states", (2, 4, 2, 8, 7), "patch_size=2"),        # a partial patch
    ("encoder_hidden_states", (2, 6, 9), "text_embed_dim=16"),  # text of another width
])
def test_sample_shapes_the_config_cannot_run_are_refused_naming_both(grafted, key, shape, named) -> None:
    m, ad = grafted
    with pytest.raises(BackboneError) as err:
        ad.token_layout(m, dict(GOOD, **{key: shape}))
    msg = str(err.value)
    assert f"sample_inputs[{key!r}] has shape {shape}" in msg and named in msg
    assert "(B, 4, F, H, W)" in msg and "(B, L, 16)" in msg  # what the model takes
    assert ad.installed_topology(m) is None


def test_the_adapters_own_layout_and_a_user_layout_on_its_grid_install(grafted) -> None:
    m, ad = grafted
    tokens = ad.token_layout(m, GOOD)
    ad.install_topology(m, CanvasTopology.dense(["video", "text"]), tokens)
    user = CanvasLayout(T=2, spatial_shape=(6, 4), d_model=16, regions={"left": (0, 2, 0, 4, 0, 2),
                                                                         "right": (0, 2, 0, 4, 2, 4)})
    ad.install_topology(m, CanvasTopology.dense(["left", "right"]), ad.token_layout(m, GOOD, layout=user))
    assert ad.installed_topology(m) is not None
    ad.install_topology(m, None, None)
