"""What ``kernel=`` does where it names fewer types than a layer runs, and ``install_topology``
checking ``kernel=`` as a canvas layer does.

* a dict that leaves a softmax-family type out: that type keeps the plan's resolution (what
  ``kernel=None`` gives it), not the reference kernel;
* one kernel on a layer without softmax-family types runs nothing, but a registered kernel that
  supports no softmax-family type is refused there too (it would otherwise be dropped silently);
* ``install_topology(kernel=name)`` calls each kernel it runs once on a small canvas and refuses
  a kernel that breaks the kernel contract, naming it, with the model unchanged.
"""

from __future__ import annotations

import pytest
import torch

import canvas_core.plugins as P
from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection
from canvas_core.compiler.lowering import lower
from canvas_core.compiler.resolution import resolve_plan
from canvas_core.errors import AttentionContractError, BackboneError, CanvasError, CompileError
from canvas_core.extend import AttentionKernel
from canvas_core.plugins import PluginHost, use_host
from canvas_core.runtime.kernels import ReferenceKernel

torch.set_num_threads(1)

LAYOUT = CanvasLayout(T=2, H=4, W=4, d_model=16, regions={"a": (0, 2, 0, 2, 0, 4), "b": (0, 2, 2, 4, 0, 4)})
MIXED = CanvasTopology(connections=[Connection("a", "a"), Connection("b", "b", fn="self_attention")])
MODULES_ONLY = CanvasTopology(connections=[Connection("a", "b", fn="linear_attention")])


class Good(ReferenceKernel):
    """The reference math under another name."""


class NaNs(AttentionKernel):
    def forward(self, q, k, v, *, scale=None, dropout_p=0.0):
        return v * float("nan")


@pytest.fixture
def host():
    with use_host(PluginHost(entry_points=lambda: [])):
        yield


def _kinds(layer):
    return {f: type(layer.executor.kernels[f"k{i}"]).__name__ for i, f in enumerate(layer.executor.soft_fns)}


def test_a_type_a_dict_leaves_out_keeps_the_plans_kernel(host):
    P.register_kernel("good_k", Good, supports=("cross_attention", "self_attention"))
    plan = resolve_plan(lower(MIXED, LAYOUT), device="cpu", kernel="good_k")
    assert _kinds(CanvasAttention(plan, d_model=16, n_heads=2)) == {"cross_attention": "Good",
                                                                    "self_attention": "Good"}
    layer = CanvasAttention(plan, d_model=16, n_heads=2, kernel={"cross_attention": "reference"})
    assert _kinds(layer) == {"cross_attention": "ReferenceKernel", "self_attention": "Good"}
    assert layer.executor.kernel_names["self_attention"] == "good_k"
    # the restricted executor of active_regions builds the same choices
    out = layer(torch.randn(1, 32, 16), active_regions={"b"})
    assert torch.isfinite(out).all()


def test_none_in_a_dict_means_the_plans_kernel_as_kernel_none_does(host):
    P.register_kernel("good_k", Good, supports=("cross_attention", "self_attention"))
    plan = resolve_plan(lower(MIXED, LAYOUT), device="cpu", kernel="good_k")
    layer = CanvasAttention(plan, d_model=16, n_heads=2, kernel={"cross_attention": None, "self_attention": "reference"})
    assert _kinds(layer) == {"cross_attention": "Good", "self_attention": "ReferenceKernel"}


def test_a_deprecated_mode_name_and_another_mode_option_are_refused():
    with pytest.raises(CompileError, match="two modes"):
        CanvasAttention(MIXED, LAYOUT, d_model=16, n_heads=2, kernel="dense", kernel_options={"mode": "sparse"})


def test_a_partial_dict_on_an_uncompiled_plan_still_runs_the_reference_kernel_elsewhere():
    layer = CanvasAttention(MIXED, LAYOUT, d_model=16, n_heads=2, kernel={"cross_attention": Good})
    assert _kinds(layer) == {"cross_attention": "Good", "self_attention": "ReferenceKernel"}


@pytest.mark.parametrize("kernel", ["reference", "sparse", Good])
def test_one_kernel_on_a_layer_without_softmax_types_runs_nothing(kernel):
    layer = CanvasAttention(MODULES_ONLY, LAYOUT, d_model=16, n_heads=2, kernel=kernel)
    assert not layer.executor.soft_fns and layer.qkv is None


def test_a_kernel_for_the_layers_module_types_is_refused_not_dropped(host):
    P.register_kernel("linear_k", Good, supports=("linear_attention",))
    with pytest.raises(CompileError) as info:
        CanvasAttention(MODULES_ONLY, LAYOUT, d_model=16, n_heads=2, kernel="linear_k")
    msg = str(info.value)
    assert "'linear_k'" in msg and "this layer has none" in msg and "compile the plan with kernel='linear_k'" in msg
    P.register_kernel("scan_k", Good, supports=("mamba",))
    with pytest.raises(CompileError, match="'scan_k' .*has none; or drop kernel="):
        CanvasAttention(MODULES_ONLY, LAYOUT, d_model=16, n_heads=2, kernel="scan_k")


# --- install_topology ---------------------------------------------------------------------------
@pytest.fixture
def full_host():
    """A fresh host with the installed plugins (the ViT adapter comes from one)."""
    with use_host(PluginHost()):
        yield




def _vit():
    timm = pytest.importorskip("timm")
    from canvas_core.looping import get_adapter, graft_looped_blocks

    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                          embed_dim=32, num_heads=2, num_classes=5, reg_tokens=2, dynamic_img_size=True).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    graft_looped_blocks(m, max_loops=2, freeze="none")
    ad = get_adapter(m)
    tokens = ad.token_layout(m, x)
    topo = CanvasTopology(connections=[Connection("patches", "patches"), Connection("cls", "patches")])
    return m, x, ad, tokens, topo


@pytest.mark.filterwarnings("ignore:In CPU autocast")
def test_install_refuses_a_broken_kernel_by_name_and_leaves_the_model_alone(full_host):
    P.register_kernel("nan_k", NaNs, supports=("cross_attention",))
    P.register_kernel("good_k", Good, supports=("cross_attention",))
    m, x, ad, tokens, topo = _vit()
    ad.install_topology(m, topo, tokens, kernel="reference")
    with torch.no_grad():
        before = m(x)
    with pytest.raises(AttentionContractError) as info:
        ad.install_topology(m, topo, tokens, kernel="nan_k")
    msg = str(info.value)
    assert msg.startswith("install_topology: kernel 'nan_k'") and "'cross_attention'" in msg and "NaN" in msg
    with torch.no_grad():
        torch.testing.assert_close(m(x), before)  # the earlier installation still runs
    inst = ad.install_topology(m, topo, tokens, kernel="good_k")  # a sound kernel installs
    assert "good_k" in inst.describe_kernels()["cross_attention"]


@pytest.mark.filterwarnings("ignore:In CPU autocast")
def test_install_kernel_that_is_no_name_says_what_to_pass():
    m, x, ad, tokens, topo = _vit()
    for bad in (3, {"cross_attention": "reference"}, Good):
        with pytest.raises(BackboneError) as info:
            ad.install_topology(m, topo, tokens, kernel=bad)
        assert isinstance(info.value, (CanvasError, TypeError))
        assert "is not a kernel name" in str(info.value) and "'reference'" in str(info.value)


@pytest.mark.filterwarnings("ignore:In CPU autocast")
def test_install_kernel_options_that_are_no_dict_are_a_type_error():
    from canvas_core.errors import CanvasTypeError

    m, x, ad, tokens, topo = _vit()
    with pytest.raises(CanvasTypeError, match="install_topology: kernel_options='sparse' .* is not a dict"):
        ad.install_topology(m, topo, tokens, kernel="reference", kernel_options="sparse")
