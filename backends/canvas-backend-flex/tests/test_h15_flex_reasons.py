"""What the flex kernels say when they cannot run, and ``flex_cpu`` inside a backbone.

* ``adapter.install_topology(..., kernel="flex_cpu")`` was refused on CPU with advice that
  ``install_topology`` could not follow ("compile for inference (requires_grad=False)"): it now
  takes ``requires_grad=False``, runs, and refuses a call that needs gradients, saying how.
* On CUDA the compiled FlexAttention kernel refuses heads narrower than 16 channels deep inside
  torch's inductor at the first call; the resolver now rejects ``flex`` there with that reason
  and falls back to another kernel.
"""

from __future__ import annotations

import pytest
import torch

import canvas_backend_flex
from canvas_core import RuntimeContext
from canvas_core.compiler import lower, resolve_plan
from canvas_core.errors import UnavailableError
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection


def _plan():
    layout = CanvasLayout(T=1, H=4, W=4, d_model=16, regions={"a": (0, 1, 0, 4, 0, 4)})
    return lower(CanvasTopology(connections=[Connection("a", "a")]), layout)


def test_cuda_head_dim_below_16_is_a_reason_and_auto_falls_back():
    reasons = canvas_backend_flex.check(RuntimeContext(device="cuda", head_dim=8))
    assert len(reasons) == 1 and "head_dim >= 16" in reasons[0] and "head_dim=8" in reasons[0]
    assert canvas_backend_flex.check(RuntimeContext(device="cuda", head_dim=16)) == []
    assert canvas_backend_flex.check(RuntimeContext(device="cuda", head_dim=32)) == []
    # flex_cpu on CPU takes narrow heads; asked on CUDA it gives its one device reason only
    assert canvas_backend_flex.check_cpu(RuntimeContext(device="cpu", head_dim=8, requires_grad=False)) == []
    assert canvas_backend_flex.check_cpu(RuntimeContext(device="cuda", head_dim=8)) == []

    plan = _plan()
    narrow = resolve_plan(plan, device="cuda", head_dim=8, preview=True).resolutions[0]
    assert narrow.kernel != "flex"
    assert any(k == "flex" and "head_dim >= 16" in " ".join(r) for k, r in narrow.rejected)
    assert resolve_plan(plan, device="cuda", head_dim=64, preview=True).resolutions[0].kernel == "flex"
    with pytest.raises(UnavailableError, match="head_dim >= 16"):
        resolve_plan(plan, device="cuda", head_dim=8, preview=True, kernel="flex")


def test_cpu_training_reason_names_what_install_topology_takes():
    reason = canvas_backend_flex.check_cpu(RuntimeContext(device="cpu"))[0]
    assert "install_topology(..., requires_grad=False)" in reason


def test_flex_cpu_installs_in_a_vit_for_inference_and_refuses_training_clearly():
    timm = pytest.importorskip("timm")
    from canvas_core.looping import get_adapter, graft_looped_blocks

    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                          embed_dim=32, num_heads=2, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tokens = ad.token_layout(m)
    top = CanvasTopology(connections=[Connection("patches", "patches"), Connection("cls", "cls"),
                                      Connection("patches", "cls")])
    ad.install_topology(m, top, tokens, kernel="reference")
    with torch.no_grad():
        want = m(x)
    with pytest.raises(UnavailableError, match="requires_grad=False"):  # the default: training
        ad.install_topology(m, top, tokens, kernel="flex_cpu")
    inst = ad.install_topology(m, top, tokens, kernel="flex_cpu", requires_grad=False,
                               kernel_options={"compile": False})  # eager: no tens-of-seconds compile
    assert "flex_cpu" in inst.describe_kernels()["cross_attention"]
    with torch.no_grad():
        torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(UnavailableError, match="flex_cpu.*install_topology"):
        m(x).sum().backward()
    with pytest.raises(Exception, match="requires_grad must be True or False"):
        ad.install_topology(m, top, tokens, requires_grad="no")
