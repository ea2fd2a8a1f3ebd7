"""What ``canvas_core.extend`` publishes behaves as documented in docs/plugins.md."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from canvas_core import CanvasLayout, CanvasTopology, Connection, ShapeError  # noqa: E402
from canvas_core import extend  # noqa: E402


def _plan():
    layout = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
    topo = CanvasTopology(connections=[Connection("a", "b"), Connection("b", "b", weight=0.5)])
    return extend.lower(topo, layout)


class _ViaReference(extend.AttentionKernel):
    """A kernel written on the base class, delegating the math to the reference."""

    def __init__(self, group, plan, *, n_heads=1, head_dim=None):
        super().__init__(group, plan, n_heads=n_heads, head_dim=head_dim)
        self.inner = extend.ReferenceKernel(group, plan, n_heads=n_heads, head_dim=head_dim or 4, mode="dense")

    def forward(self, q, k, v, *, scale=None, dropout_p=0.0):
        self.check_qkv(q, k, v)
        return self.inner(q, k, v, scale=scale, dropout_p=dropout_p)


def test_a_kernel_on_the_base_class_keeps_fn_and_size_and_checks_shapes():
    plan = _plan()
    fn, group = next(iter(plan.groups.items()))
    kern = _ViaReference(group, plan, n_heads=2, head_dim=4)
    assert (kern.fn, kern.n, kern.n_heads) == (fn, plan.n, 2)
    assert f"n={plan.n}" in repr(kern)
    q = torch.randn(1, 2, plan.n, 4)
    assert kern(q, q, q).shape == (1, 2, plan.n, 4)
    with pytest.raises(ShapeError, match=f"over {plan.n} positions"):
        kern(q[:, :, :-1], q, q)
    with pytest.raises(ShapeError, match="must agree"):
        kern(q, q[:1, :1], q)
    with pytest.raises(NotImplementedError):
        extend.AttentionKernel(group, plan)(q, q, q)


def test_bundled_backends_build_on_the_published_base():
    flex = pytest.importorskip("canvas_backend_flex.kernel")
    xf = pytest.importorskip("canvas_backend_xformers.kernel")
    assert issubclass(flex.FlexKernel, extend.AttentionKernel)
    assert issubclass(xf.XFormersKernel, extend.AttentionKernel)


def test_the_reference_kernel_is_built_on_the_published_base():
    plan = _plan()
    fn, group = next(iter(plan.groups.items()))
    kern = extend.ReferenceKernel(group, plan, n_heads=2, head_dim=4, mode="dense")
    assert isinstance(kern, extend.AttentionKernel)
    assert (kern.fn, kern.n, kern.n_heads, kern.head_dim) == (fn, plan.n, 2, 4)


def test_as_dtype_casts_only_when_needed():
    x = torch.randn(3, dtype=torch.float64)
    assert extend.as_dtype(x, torch.float64) is x
    y = extend.as_dtype(x, torch.float32)
    assert y.dtype == torch.float32 and torch.equal(y, x.float())
