"""``torch.compile`` (inductor, CPU) of a tiny diffusers Mochi whose attention follows an installed
canvas topology, alone and under a looped graft, against the same model run eagerly.

Each compiled model is called before the eager one on purpose.  With padded prompt tokens the
processor asks for a runner of the plan restricted to each sample's kept tokens, built on first
use and cached.  That build is NumPy work that must run outside dynamo's graphs: when dynamo
traced it, its NumPy ``cumsum`` over a bool array became a bool ``Tensor.cumsum``, which CPU
cannot run ("cumsum_out_cpu" not implemented for 'Bool').  An eager call first would fill the
cache and hide the failure.

``fullgraph`` stays off: dropping each sample's padded prompt tokens depends on the mask's
values, so the Mochi processor breaks the graph whenever it runs (topology or ``beta != 1``).
"""

import pytest
import torch
from canvas_plugin_mochi.adapter import MochiAdapter
from diffusers import MochiTransformer3DModel

import canvas_core
from canvas_core import CanvasTopology, Connection, SharpeningSchedule
from canvas_core.testing import one_thread

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")

TINY = dict(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=12,
            in_channels=4, text_embed_dim=16, time_embed_dim=8, max_sequence_length=6)

# video reads its own frame and the previous one (weighted), the prompt and itself through a
# gated module; the prompt reads itself: two softmax groups' worth of rectangles plus a module
TOPOLOGY = CanvasTopology(connections=[
    Connection("video", "video", t_src=0, t_dst=0),
    Connection("video", "video", t_src=0, t_dst=-1, weight=2.0, temporal_fill="drop"),
    Connection("video", "text", weight=0.5),
    Connection("text", "text"),
    Connection("video", "video", fn="gated"),
])


@pytest.fixture(autouse=True)
def _one_thread_fresh_dynamo():
    with one_thread():
        torch._dynamo.reset()
        yield
        torch._dynamo.reset()


def _model():
    torch.manual_seed(0)
    m = MochiTransformer3DModel(**TINY).eval()
    with torch.no_grad():  # diffusers starts Mochi's RoPE frequencies at 0: give them values
        m.pos_frequencies.normal_()
    return m


def _inputs():
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(2, TINY["max_sequence_length"])
    mask[1, 4:] = 0  # sample 1 has two padded prompt tokens: its own restricted plan
    return dict(hidden_states=torch.randn(2, TINY["in_channels"], 2, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(2, TINY["max_sequence_length"], TINY["text_embed_dim"],
                                                  generator=g),
                timestep=torch.tensor([3, 700]), encoder_attention_mask=mask)


def _install(m, kw):
    ad = MochiAdapter()
    inst = ad.install_topology(m, TOPOLOGY, ad.token_layout(m, kw))
    assert inst.module_types == ("gated",)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # open the zero-initialised gates so the gated module counts
        for name, p in m.named_parameters():
            if name.endswith("gate_alpha"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    return ad


def test_installed_topology_compiles_on_first_call():
    m, kw = _model(), _inputs()
    ad = MochiAdapter()
    ad.prepare(m)
    _install(m, kw)
    compiled = torch.compile(m, backend="inductor")
    with torch.no_grad():
        got = compiled(**kw).sample  # before any eager call: the restricted runners are built here
        want = m(**kw).sample
        again = compiled(**kw).sample  # the cached runners, now through the compiled graphs
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(again, want)


@pytest.mark.parametrize("scope", ["block", "model"])
def test_looped_graft_with_topology_compiles(scope):
    m, kw = _model(), _inputs()
    if scope == "model":  # sharpening applies to block and span scopes only
        canvas_core.graft_looped_blocks(m, max_loops=2, scope="model", gate_init_bias=1.0)
    else:
        canvas_core.graft_looped_blocks(m, max_loops=2, sharpening=SharpeningSchedule(2))
    _install(m, kw)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the graft is an identity at init: give its loop parameters values
        for name, p in m.named_parameters():
            if "loop_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    m.eval()
    compiled = torch.compile(m, backend="inductor")
    with torch.no_grad():
        for n in (2, 1):  # 2 first: the sharpened pass (beta != 1) is the first one compiled
            canvas_core.set_loops(m, n)
            got = compiled(**kw).sample
            want = m(**kw).sample
            torch.testing.assert_close(got, want)
