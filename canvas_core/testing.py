"""Testing kit for plugin authors: register a plugin for a test, and conformance suites.

* :func:`registered_plugin`: ``with registered_plugin(my_plugin_module):`` registers a plugin
  object into the default host and removes it (and everything it registered) afterwards.
* ``canvas_plugin``: the same as a pytest fixture (``pytest_plugins = ["canvas_core.testing"]``,
  or ``from canvas_core.testing import canvas_plugin`` in a conftest / test module).
* :func:`check_attention_type`: the conformance suite every attention type passes.
* :func:`check_kernel`: a kernel against the core's dense reference kernel.

Importing this module does not import torch (the checks import it when they run).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from canvas_core.plugins.host import PluginHost, PluginRecord, get_host

__all__ = [
    "registered_plugin",
    "isolated_plugins",
    "ConformanceReport",
    "check_attention_type",
    "check_kernel",
    "ATTENTION_PROPERTIES",
]


# ---------------------------------------------------------------------- plugin registration
@contextlib.contextmanager
def registered_plugin(plugin: Any, name: Optional[str] = None, *, distribution: Optional[str] = None,
                      version: str = "", host: Optional[PluginHost] = None) -> Iterator[PluginRecord]:
    """Register ``plugin`` (a module or object with ``@hookimpl`` functions) for a block.

    Its hooks run at once; an error in them (or a name clash) is raised.  On exit the plugin and
    everything it registered are removed, and any registration it overrode comes back.
    Yields the :class:`~canvas_core.plugins.host.PluginRecord`.
    """
    host = host or get_host()
    rec = host.register_plugin(plugin, name, distribution=distribution, version=version)
    try:
        yield rec
    finally:
        host.unregister_plugin(rec.name)


@contextlib.contextmanager
def isolated_plugins(**host_kwargs: Any) -> Iterator[PluginHost]:
    """Run a block against a fresh default :class:`PluginHost` (``host_kwargs`` passed to it:
    ``autoload=False``, ``allow=[...]``, ``block=[...]``, ``entry_points=callable``); the previous
    default host comes back afterwards, untouched."""
    from canvas_core.plugins.host import use_host

    with use_host(PluginHost(**host_kwargs)) as host:
        yield host


def _make_fixture():
    import pytest

    @pytest.fixture
    def canvas_plugin():
        """Fixture: ``canvas_plugin(obj, name=None, distribution=None)`` registers a plugin object
        into the default host for the test; all are removed at teardown."""
        host = get_host()
        names: List[str] = []

        def register(plugin: Any, name: Optional[str] = None, **kw: Any) -> PluginRecord:
            rec = host.register_plugin(plugin, name, **kw)
            names.append(rec.name)
            return rec

        yield register
        for n in reversed(names):
            host.unregister_plugin(n)

    return canvas_plugin


if "pytest" in sys.modules:  # loaded as a pytest plugin or from a test: define the fixture now
    canvas_plugin = _make_fixture()


def __getattr__(name: str) -> Any:  # `from canvas_core.testing import canvas_plugin` outside pytest
    if name == "canvas_plugin":
        fixture = _make_fixture()
        globals()["canvas_plugin"] = fixture
        return fixture
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------- conformance: attention
#: the properties :func:`check_attention_type` checks, in order.
ATTENTION_PROPERTIES = (
    "construct", "shape/dtype/device", "Nq != Nk", "gradients", "batch independence",
    "empty keys", "one key", "fully masked query", "deterministic",
    # strict=True only:
    "zeros without keys", "key_mask respected",
)


@dataclass
class ConformanceReport:
    """Outcome of a conformance suite: what passed, what was skipped (and why), what failed."""

    name: str
    passed: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)
    details: Dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def __bool__(self) -> bool:
        return self.ok

    def summary(self) -> str:
        lines = [f"conformance of {self.name!r}: {len(self.passed)} passed, {len(self.skipped)} skipped, "
                 f"{len(self.failed)} failed"]
        lines += [f"  FAILED {p}: {m}" for p, m in self.failed.items()]
        lines += [f"  skipped {p}: {m}" for p, m in self.skipped.items()]
        return "\n".join(lines)


class _Failed(Exception):
    pass


def _resolve_dtype(torch: Any, dtype: Any) -> Any:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    from canvas_core.plugins.spec import normalize_dtype

    value = getattr(torch, normalize_dtype(dtype), None)
    if not isinstance(value, torch.dtype):
        from canvas_core.plugins.spec import SpecError

        raise SpecError(f"unknown dtype {dtype!r}; use a torch dtype such as 'float32', 'float16' or 'bfloat16'")
    return value


def _resolve_device(torch: Any, device: Any, where: str) -> Any:
    from canvas_core.plugins.spec import check_device

    check_device(device, where)  # CanvasTypeError / SpecError for a non-device or an unknown type
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        from canvas_core.plugins.spec import SpecError

        raise SpecError(f"{where}: invalid device {device!r} ({exc}); use e.g. 'cpu' or 'cuda:0'") from None


def _check_sizes(where: str, **sizes: Any) -> None:
    from canvas_core.errors import CanvasTypeError

    for key, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise CanvasTypeError(f"{where}: {key} must be a positive int, got {v!r}")


def _check_target(name: Any, where: str, kind: str) -> None:
    """A registered name (UnknownNameError when it is not) or a callable factory."""
    from canvas_core.errors import CanvasTypeError

    if isinstance(name, str):
        from canvas_core.plugins import get_spec

        get_spec(kind, name)  # raises UnknownNameError naming the closest registered name
    elif not callable(name):
        raise CanvasTypeError(
            f"{where}: expected a registered name or a factory / class, got {type(name).__name__} {name!r}")


def _accepts_key_mask(module: Any) -> bool:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return True
    return "key_mask" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def check_attention_type(name: Any, d_model: int = 32, n_heads: int = 4, device: Any = "cpu",
                         dtype: Any = None, *, seed: int = 0, batch: int = 3, strict: bool = False,
                         grad_inputs: Optional[Sequence[str]] = None, raise_on_failure: bool = True,
                         **kwargs: Any) -> ConformanceReport:
    """Conformance suite of an attention type (registered name, or a factory / class).

    Builds the type with ``create_attention(name, d_model, n_heads, dropout=0.0, **kwargs)``
    under ``torch.manual_seed(seed)``, moves it to ``device`` / ``dtype`` (default float32) and
    checks, each as a named property:

    * ``shape/dtype/device``: ``(B, Nq, D)`` output with the input's dtype and device;
    * ``Nq != Nk``: works with more and with fewer queries than keys;
    * ``gradients``: backward works, every gradient is finite, the output has a gradient path to
      some input and, if the module has parameters, some parameter gets a non-zero gradient
      (``grad_inputs=("queries", "keys", "values")`` requires a path to each of those); skipped
      when the output depends on nothing;
    * ``batch independence``: changing sample 1 of the batch leaves the other samples' outputs;
    * ``empty keys`` (``Nk == 0``), ``one key``, ``fully masked query`` (a ``key_mask`` row with
      no allowed key): correct shape, no NaN / inf;
    * ``deterministic``: same seed, same input -> same output (a fresh module);
    * ``strict=True`` adds ``zeros without keys`` (queries with no key output exactly 0) and
      ``key_mask respected`` (keys masked for every query do not influence the output): the
      contract of canvas-core's runtime for types used in topologies.

    Mask checks are skipped (and reported) when ``forward`` takes no ``key_mask``.

    Returns the :class:`ConformanceReport`; raises ``AssertionError`` naming the type and every
    failed property when one fails (unless ``raise_on_failure=False``).
    """
    import torch

    _check_target(name, "check_attention_type", "attention")
    _check_sizes("check_attention_type", d_model=d_model, n_heads=n_heads, batch=batch)
    dtype = _resolve_dtype(torch, dtype)
    device = _resolve_device(torch, device, "check_attention_type")
    label = name if isinstance(name, str) else getattr(name, "__name__", repr(name))
    report = ConformanceReport(str(label))
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 2e-2
    D = d_model

    def build() -> Any:
        torch.manual_seed(seed)
        if isinstance(name, str):
            from canvas_core.plugins import create_attention

            module = create_attention(name, d_model=d_model, n_heads=n_heads, dropout=0.0, **kwargs)
        else:
            module = name(d_model=d_model, n_heads=n_heads, dropout=0.0, **kwargs)
        return module.to(device=device, dtype=dtype)

    gen = torch.Generator().manual_seed(seed + 12345)

    def rand(*shape: int) -> Any:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    try:
        module = build()
        if not callable(module):
            raise TypeError(f"the factory returned a non-callable {type(module).__name__}")
    except Exception as exc:
        report.failed["construct"] = f"building it raised {type(exc).__name__}: {exc}"
        return _finish(report, raise_on_failure)
    report.passed.append("construct")
    takes_mask = _accepts_key_mask(module)

    def call(q: Any, k: Any, v: Any, mask: Any = None, mod: Any = None) -> Any:
        torch.manual_seed(seed + 1)  # types drawing randomness in forward stay reproducible
        m = module if mod is None else mod
        return m(q, k, v) if mask is None else m(q, k, v, key_mask=mask)

    def expect_output(out: Any, B: int, Nq: int, what: str) -> None:
        if not isinstance(out, torch.Tensor):
            raise _Failed(f"{what}: returned {type(out).__name__}, expected a tensor")
        if tuple(out.shape) != (B, Nq, D):
            raise _Failed(f"{what}: output shape {tuple(out.shape)}, expected (B, Nq, D) = {(B, Nq, D)}")
        if out.dtype != dtype:
            raise _Failed(f"{what}: output dtype {out.dtype}, input dtype {dtype}")
        if out.device.type != device.type:
            raise _Failed(f"{what}: output on {out.device}, input on {device}")
        if not torch.isfinite(out).all():
            bad = int((~torch.isfinite(out)).sum())
            raise _Failed(f"{what}: {bad} NaN/inf values in the output")

    def run(prop: str, fn: Callable[[], Optional[str]]) -> None:
        try:
            skip = fn()
        except _Failed as exc:
            report.failed[prop] = str(exc)
        except Exception as exc:
            report.failed[prop] = f"raised {type(exc).__name__}: {exc}"
        else:
            if skip:
                report.skipped[prop] = skip
            else:
                report.passed.append(prop)

    B, Nq, Nk = batch, 5, 7

    def shape_check() -> None:
        q, k, v = rand(B, Nq, D), rand(B, Nk, D), rand(B, Nk, D)
        with torch.no_grad():
            expect_output(call(q, k, v), B, Nq, f"(B, Nq, Nk) = {(B, Nq, Nk)}")
            expect_output(call(rand(B, Nk, D), k, v), B, Nk, f"(B, Nq, Nk) = {(B, Nk, Nk)}")

    def nq_nk_check() -> None:
        with torch.no_grad():
            for nq, nk in ((9, 4), (2, 11)):
                expect_output(call(rand(B, nq, D), rand(B, nk, D), rand(B, nk, D)), B, nq,
                              f"(B, Nq, Nk) = {(B, nq, nk)}")

    def grad_check() -> Optional[str]:
        q, k, v = (rand(B, Nq, D).requires_grad_(), rand(B, Nk, D).requires_grad_(),
                   rand(B, Nk, D).requires_grad_())
        params = [p for p in module.parameters() if p.requires_grad]
        module.zero_grad(set_to_none=True)
        out = call(q, k, v)
        if not out.requires_grad:
            if params:
                raise _Failed("the output does not require grad although the module has trainable "
                              "parameters (detached computation?)")
            return "the output depends on no input or parameter (nothing to differentiate)"
        w = rand(B, Nq, D)
        (out * w).sum().backward()
        # connected: a graph path exists (grad is a tensor, maybe zero at this point, e.g. a
        # zero-initialised gate); flowing: the gradient is non-zero.
        connected, flowing = {}, {}
        for label_, t in (("queries", q), ("keys", k), ("values", v)):
            g = t.grad
            if g is not None and not torch.isfinite(g).all():
                raise _Failed(f"non-finite gradient w.r.t. {label_}")
            connected[label_] = g is not None
            flowing[label_] = g is not None and bool(g.abs().sum() > 0)
        p_flow = 0
        for p in params:
            if p.grad is not None:
                if not torch.isfinite(p.grad).all():
                    raise _Failed("non-finite gradient w.r.t. a parameter")
                p_flow += bool(p.grad.abs().sum() > 0)
        report.details["gradient flow"] = {
            **{k_: ("non-zero" if flowing[k_] else "zero" if connected[k_] else "none") for k_ in connected},
            "parameters": f"{p_flow}/{len(params)} non-zero"}
        required = list(grad_inputs or ())
        missing = [r for r in required if not connected.get(r, False)]
        if missing:
            raise _Failed(f"no gradient path to {', '.join(missing)} (grad_inputs={tuple(required)})")
        if not any(connected.values()):
            raise _Failed("the output has no gradient path to the queries, keys or values")
        if params and p_flow == 0:
            raise _Failed(f"none of the {len(params)} trainable parameters gets a non-zero gradient")
        if not params and not any(flowing.values()):
            raise _Failed("every gradient is zero")
        return None

    def batch_check() -> None:
        if B < 2:
            raise _Failed("needs batch >= 2")
        q, k, v = rand(B, Nq, D), rand(B, Nk, D), rand(B, Nk, D)
        with torch.no_grad():
            base = call(q, k, v)
            q2, k2, v2 = q.clone(), k.clone(), v.clone()
            q2[1], k2[1], v2[1] = rand(Nq, D) * 3, rand(Nk, D) * 3, rand(Nk, D) * 3
            other = call(q2, k2, v2)
        keep = [b for b in range(B) if b != 1]
        diff = float((base[keep] - other[keep]).abs().max())
        scale = float(base[keep].abs().max()) + 1.0
        if diff > tol * scale * 10:
            raise _Failed(f"changing sample 1's inputs changed other samples' outputs by {diff:.3g}")

    def empty_check() -> None:
        with torch.no_grad():
            out = call(rand(B, Nq, D), rand(B, 0, D), rand(B, 0, D))
        expect_output(out, B, Nq, "empty key set (Nk = 0)")
        report.details["zeros with Nk=0"] = bool((out == 0).all())

    def one_check() -> None:
        with torch.no_grad():
            expect_output(call(rand(B, Nq, D), rand(B, 1, D), rand(B, 1, D)), B, Nq, "one key (Nk = 1)")

    def masked_check() -> Optional[str]:
        if not takes_mask:
            return "forward() takes no key_mask"
        mask = torch.rand(B, Nq, Nk, generator=gen) > 0.4
        mask[:, :, 0] = True
        mask[:, 0, :] = False  # query 0 may attend to nothing
        mask = mask.to(device)
        with torch.no_grad():
            out = call(rand(B, Nq, D), rand(B, Nk, D), rand(B, Nk, D), mask)
        expect_output(out, B, Nq, "key_mask with a fully masked query")
        report.details["zeros for fully masked query"] = bool((out[:, 0] == 0).all())
        return None

    def determinism_check() -> None:
        q, k, v = rand(B, Nq, D), rand(B, Nk, D), rand(B, Nk, D)
        other = build()
        with torch.no_grad():
            a, b = call(q, k, v), call(q, k, v, mod=other)
        if not torch.allclose(a, b, rtol=tol, atol=tol):
            raise _Failed(f"two modules built with seed {seed} give different outputs on the same "
                          f"input (max diff {float((a - b).abs().max()):.3g})")

    def zeros_check() -> Optional[str]:
        with torch.no_grad():
            out = call(rand(B, Nq, D), rand(B, 0, D), rand(B, 0, D))
            if not bool((out == 0).all()):
                raise _Failed(f"with Nk = 0 the output is not zero (max |out| {float(out.abs().max()):.3g})")
            if not takes_mask:
                return "forward() takes no key_mask (only Nk = 0 checked)"
            mask = torch.ones(B, Nq, Nk, dtype=torch.bool)
            mask[:, 2, :] = False
            out = call(rand(B, Nq, D), rand(B, Nk, D), rand(B, Nk, D), mask.to(device))
            if not bool((out[:, 2] == 0).all()):
                raise _Failed("a query whose key_mask row is all False does not output zeros")
        return None

    def mask_respected_check() -> Optional[str]:
        if not takes_mask:
            return "forward() takes no key_mask"
        mask = torch.rand(B, Nq, Nk, generator=gen) > 0.3
        mask[:, :, 0] = True
        mask[:, :, Nk - 1] = False  # the last key is invisible to every query
        mask = mask.to(device)
        q, k, v = rand(B, Nq, D), rand(B, Nk, D), rand(B, Nk, D)
        k2, v2 = k.clone(), v.clone()
        k2[:, Nk - 1] = rand(B, D) * 5
        v2[:, Nk - 1] = rand(B, D) * 5
        with torch.no_grad():
            a, b = call(q, k, v, mask), call(q, k2, v2, mask)
        diff = float((a - b).abs().max())
        if diff > tol * (float(a.abs().max()) + 1.0) * 10:
            raise _Failed(f"changing a key masked for every query changed the output by {diff:.3g}")
        return None

    run("shape/dtype/device", shape_check)
    run("Nq != Nk", nq_nk_check)
    run("gradients", grad_check)
    run("batch independence", batch_check)
    run("empty keys", empty_check)
    run("one key", one_check)
    run("fully masked query", masked_check)
    run("deterministic", determinism_check)
    if strict:
        run("zeros without keys", zeros_check)
        run("key_mask respected", mask_respected_check)
    report.details["accepts key_mask"] = takes_mask
    return _finish(report, raise_on_failure)


def _finish(report: ConformanceReport, raise_on_failure: bool) -> ConformanceReport:
    if report.failed and raise_on_failure:
        raise AssertionError(
            f"attention type {report.name!r} fails the canvas conformance suite: "
            + "; ".join(f"[{p}] {m}" for p, m in report.failed.items()))
    return report


# ---------------------------------------------------------------------- conformance: kernels
def check_kernel(name: Any, *, n_heads: int = 2, head_dim: int = 8, device: Any = "cpu", dtype: Any = None,
                 seed: int = 0, atol: Optional[float] = None, backward: Optional[bool] = None,
                 raise_on_failure: bool = True, **options: Any) -> ConformanceReport:
    """Check a kernel (registered name or factory) against the core's dense reference kernel.

    Builds a few small canvases (weighted connections, a temporal offset, a region no connection
    reads), lowers each to an :class:`~canvas_core.compiler.plan.ExecutionPlan` and, for every fn
    group the kernel supports, compares ``kernel(q, k, v, scale=...)`` with
    ``ReferenceKernel(mode="dense")`` on random ``(B, H, N, d)`` inputs (output and, unless
    ``backward=False``, gradients; default: the spec's ``differentiable`` metadata, else True).
    """
    import torch

    from canvas_core.compiler.lowering import lower
    from canvas_core.runtime.kernels import ReferenceKernel
    from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

    _check_target(name, "check_kernel", "kernels")
    _check_sizes("check_kernel", n_heads=n_heads, head_dim=head_dim)
    dtype = _resolve_dtype(torch, dtype)
    device = _resolve_device(torch, device, "check_kernel")
    tol = atol if atol is not None else (2e-5 if dtype in (torch.float32, torch.float64) else 3e-2)
    label = name if isinstance(name, str) else getattr(name, "__name__", repr(name))
    report = ConformanceReport(f"kernel {label}")
    supports: Sequence[str] = ("cross_attention",)
    if isinstance(name, str):
        from canvas_core.plugins import create_kernel, get_kernel_spec

        kspec = get_kernel_spec(name)
        supports = kspec.supports or supports
        if backward is None:
            backward = kspec.metadata.get("differentiable", True) is not False

        def factory(group, plan, **kw):
            return create_kernel(name, group, plan, **kw)
    else:
        factory = name
    backward = True if backward is None else bool(backward)
    layout = CanvasLayout(T=3, H=2, W=3, d_model=n_heads * head_dim, regions={
        "a": (0, 3, 0, 1, 0, 3), "b": (0, 3, 1, 2, 0, 2), "c": (0, 2, 1, 2, 2, 3)})
    cases = {
        "dense": CanvasTopology(connections=[Connection("a", "b"), Connection("b", "a", weight=0.5),
                                             Connection("a", "a", weight=2.0)]),
        "temporal": CanvasTopology(connections=[Connection("a", "b", t_src=0, t_dst=-1),
                                                Connection("b", "b")]),
    }
    gen = torch.Generator().manual_seed(seed)
    for case, topo in cases.items():
        for fn in supports:
            topo_fn = CanvasTopology(connections=[
                Connection(c.src, c.dst, weight=c.weight, t_src=c.t_src, t_dst=c.t_dst, fn=fn)
                for c in topo.connections])
            prop = f"{case}/{fn}"
            try:
                plan = lower(topo_fn, layout)
                group = plan.groups[fn]
                ref = ReferenceKernel(group, plan, n_heads=n_heads, head_dim=head_dim, mode="dense").to(device)
                ker = factory(group, plan, n_heads=n_heads, head_dim=head_dim, **options).to(device)
                N = plan.n
                q, k, v = (torch.randn(2, n_heads, N, head_dim, generator=gen).to(device, dtype)
                           .requires_grad_(backward) for _ in range(3))
                scale = 1.0 / math.sqrt(head_dim)
                with torch.set_grad_enabled(backward):
                    out = ker(q, k, v, scale=scale)
                    want = ref(q.float(), k.float(), v.float(), scale=scale)
                if tuple(out.shape) != tuple(want.shape):
                    raise _Failed(f"output shape {tuple(out.shape)}, expected {tuple(want.shape)}")
                diff = float((out.detach().float() - want.detach()).abs().max())
                if not math.isfinite(diff) or diff > tol:
                    raise _Failed(f"differs from the reference by {diff:.3g} (atol {tol})")
                if not backward:
                    report.passed.append(prop)
                    continue
                g = torch.randn(want.shape, generator=gen).to(device)
                got = torch.autograd.grad((out.float() * g).sum(), (q, k, v))
                exp = torch.autograd.grad((want * g).sum(), (q, k, v))
                gdiff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(got, exp))
                if not math.isfinite(gdiff) or gdiff > tol * 10:
                    raise _Failed(f"gradients differ from the reference by {gdiff:.3g}")
            except _Failed as exc:
                report.failed[prop] = str(exc)
            except Exception as exc:
                report.failed[prop] = f"raised {type(exc).__name__}: {exc}"
            else:
                report.passed.append(prop)
    if report.failed and raise_on_failure:
        raise AssertionError(f"{report.name} fails the kernel conformance check: "
                             + "; ".join(f"[{p}] {m}" for p, m in report.failed.items()))
    return report
