"""Resolution: an attention type name + a target -> the spec and kernel that run it.

Rules (never a silent change of the math):

* the attention type's spec must be able to run in ``ctx``; otherwise :class:`UnavailableError`
  lists every candidate (the type, and the kernels supporting it) with its reasons and an install
  hint;
* kernels are the registered kernels whose ``supports`` contains the type, tried by descending
  ``priority``; the first one with no reason wins, every rejected one is recorded with its
  reasons; with none usable, ``kernel`` is None: the type's own module computes the same math;
* an explicit ``kernel=`` must support the type and be able to run, else
  :class:`UnavailableError` says why (a kernel that does not support the type at all is ignored
  and recorded in ``rejected``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from canvas_core.errors import CanvasTypeError, UnavailableError
from canvas_core.plugins.hints import install_hint, pip_name, provider_hint
from canvas_core.plugins.host import PluginHost, get_host
from canvas_core.plugins.spec import RuntimeContext, Spec

__all__ = ["Resolution", "resolve_attention", "kernel_candidates", "build_attention", "AUTO_KERNEL"]

#: values of ``kernel=`` that leave the choice to the resolver.
AUTO_KERNEL = (None, "", "auto")


@dataclass
class Resolution:
    """Outcome of :func:`resolve_attention`.

    Attributes:
        name: the requested attention type.
        attention: its spec.
        kernel: the chosen kernel spec, or None (the module's own forward runs).
        rejected: ``[(candidate_name, [reasons, ...]), ...]`` for every candidate not chosen.
        ctx: the target.
        note: free text (e.g. why an explicit kernel was ignored).
        outranked: names of the rejected kernels that rank above the chosen one (all rejected
            kernels when none was chosen); empty when a kernel was asked for by name.  Non-empty
            means the choice is a fallback that keeps the math.
    """

    name: str
    attention: Spec
    kernel: Optional[Spec]
    rejected: List[Tuple[str, List[str]]] = field(default_factory=list)
    ctx: RuntimeContext = field(default_factory=RuntimeContext)
    note: str = ""
    outranked: List[str] = field(default_factory=list)

    @property
    def kernel_name(self) -> Optional[str]:
        return None if self.kernel is None else self.kernel.name

    @property
    def provider(self) -> str:
        return self.attention.provider

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "attention": self.attention.name,
            "provider": self.attention.provider,
            "version": self.attention.version,
            "kernel": self.kernel_name,
            "kernel_provider": None if self.kernel is None else self.kernel.provider,
            "rejected": [{"candidate": n, "reasons": list(r)} for n, r in self.rejected],
            "device": self.ctx.device_type,
            "dtype": self.ctx.dtype_name,
            "note": self.note,
        }

    def __str__(self) -> str:
        k = self.kernel_name or "module"
        s = f"{self.name} -> {self.attention.describe_provider()}, kernel {k}"
        if self.rejected:
            s += "; rejected " + "; ".join(f"{n}: {', '.join(r)}" for n, r in self.rejected)
        return s


def kernel_candidates(name: str, host: Optional[PluginHost] = None) -> List[Spec]:
    """Registered kernels supporting attention type ``name``, by descending priority."""
    host = host or get_host()
    kernels = host.registry("kernels")
    cands = [s for s in kernels.specs() if name in s.supports]
    return sorted(cands, key=lambda s: -s.priority)  # stable: ties keep name order


def _kernel_reasons(spec: Spec, ctx: RuntimeContext, host: PluginHost) -> List[str]:
    conflicts = host.registry("kernels").conflicts()
    reasons = spec.unsupported_reasons(ctx)
    if spec.name in conflicts:
        reasons = [conflicts[spec.name]] + reasons
    return reasons


def _hints(specs: List[Spec], reasons: List[List[str]]) -> str:
    pkgs = sorted({m for s in specs for m in s.missing_requirements()})
    hints = []
    if pkgs:
        hints.append(f"install the missing package(s) with pip install {' '.join(pip_name(p) for p in pkgs)}")
    if any("CUDA" in r or "runs on" in r for rs in reasons for r in rs):
        hints.append("run on a device the implementation supports")
    if any("dtype" in r for rs in reasons for r in rs):
        hints.append("use a supported dtype")
    if not hints:
        return ""
    # one sentence whatever the number of hints: "A.", "A or B.", "A, B or C."
    text = hints[0] if len(hints) == 1 else ", ".join(hints[:-1]) + " or " + hints[-1]
    return text[0].upper() + text[1:] + "."


def resolve_attention(name: str, ctx: Any = None, kernel: Optional[str] = None, *,
                      host: Optional[PluginHost] = None) -> Resolution:
    """Choose how attention type ``name`` runs in ``ctx`` (see the module docstring).

    Args:
        name: attention type (the ``fn`` of a connection).
        ctx: :class:`RuntimeContext` (None: CPU / float32 / training).
        kernel: None / ``"auto"`` to choose, or a kernel name to insist on.
        host: plugin host (default: the default host).

    Raises:
        UnknownNameError: no such type (or kernel); the message has the closest match and hint.
        PluginLoadError: the plugin that would provide it failed to load.
        UnavailableError: the type (or the requested kernel) cannot run in ``ctx``.
    """
    host = host or get_host()
    ctx = RuntimeContext.coerce(ctx)
    spec = host.registry("attention").get(name)
    cands = kernel_candidates(name, host)
    own = spec.unsupported_reasons(ctx)
    if own:
        rows = [(f"{name} ({spec.describe_provider()})", own)]
        rows += [(f"kernel {k.name} ({k.describe_provider()})", _kernel_reasons(k, ctx, host) or ["could run"])
                 for k in cands]
        hint = _hints([spec, *cands], [r for _, r in rows])
        raise UnavailableError(
            f"attention type {name!r} cannot run on {ctx.describe()}. Candidates: "
            + "; ".join(f"{n}: {', '.join(r)}" for n, r in rows) + "." + (f" To fix: {hint}" if hint else ""))
    rejected: List[Tuple[str, List[str]]] = []
    if kernel not in AUTO_KERNEL:
        kspec = host.registry("kernels").get(str(kernel))
        if name not in kspec.supports:
            rejected.append((kspec.name, [f"does not support {name!r} (supports: {', '.join(kspec.supports) or 'nothing'})"]))
            return Resolution(name, spec, None, rejected, ctx,
                              note=f"kernel {kspec.name!r} does not execute {name!r}; the type's own module runs")
        reasons = _kernel_reasons(kspec, ctx, host)
        if reasons:
            hint = _hints([kspec], [reasons])
            dist = provider_hint("kernels", kspec.name)
            raise UnavailableError(
                f"kernel {kspec.name!r} ({kspec.describe_provider()}) was requested for attention type "
                f"{name!r} but cannot run on {ctx.describe()}: {'; '.join(reasons)}."
                + (f" To fix: {hint}" if hint else "")
                + (f" ({install_hint(dist)})" if dist and kspec.missing_requirements() else "")
                + " Or drop kernel= to let canvas-core choose.")
        return Resolution(name, spec, kspec, rejected, ctx)
    chosen: Optional[Spec] = None
    passed: List[Spec] = []
    for k in cands:  # by descending priority; the first that can run wins
        reasons = _kernel_reasons(k, ctx, host)
        if not reasons:
            chosen = k
            break
        rejected.append((k.name, reasons))
        passed.append(k)
    note = ""
    if chosen is None and rejected:
        note = "no kernel can run here; the type's own module computes the same attention"
    outranked = [k.name for k in passed if chosen is None or k.priority > chosen.priority]
    return Resolution(name, spec, chosen, rejected, ctx, note=note, outranked=outranked)


def _keywords(factory: Any) -> Optional[set]:
    """The keyword names ``factory`` takes, or None when it takes ``**kwargs`` or cannot be read."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names = set()
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.add(p.name)
    return names


def build_attention(spec: Spec, d_model: int, n_heads: int = 4, dropout: float = 0.0, **kwargs: Any) -> Any:
    """Instantiate the attention type of ``spec`` (already resolved: no registry lookup here).

    Calls ``factory(d_model=, n_heads=, dropout=, **kwargs)``; a factory without an ``n_heads``
    parameter is called without it, one without ``dropout`` only when ``dropout`` is 0.
    ``create_attention(name, ...)`` is this function after a registry lookup of ``name``.

    Raises:
        UnavailableError: a package the type requires is not installed.
        CanvasTypeError: the factory does not take one of the given keyword arguments.
        PluginLoadError / FactoryError: the factory failed to import or to build.
    """
    if isinstance(d_model, int) and not isinstance(d_model, bool):  # before any plugin allocates weights
        from canvas_core.schema.limits import check_size

        check_size("width", d_model, f"attention type {spec.name!r} d_model")
    if spec.missing_requirements():
        return spec.create(d_model=d_model, n_heads=n_heads, dropout=dropout, **kwargs)  # raises
    factory = spec.load()
    call = {"d_model": d_model, "n_heads": n_heads, "dropout": dropout, **kwargs}
    accepted = _keywords(factory)
    if accepted is not None:
        if "n_heads" not in accepted:
            call.pop("n_heads")
        if "dropout" not in accepted:
            if dropout:
                raise CanvasTypeError(
                    f"attention type {spec.name!r} ({spec.factory_path}) takes no dropout argument; "
                    f"create it with dropout=0.0 (got {dropout!r})")
            call.pop("dropout")
        unknown = sorted(set(call) - set(accepted))
        if unknown:
            raise CanvasTypeError(
                f"attention type {spec.name!r} ({spec.factory_path}) does not take "
                f"{', '.join(repr(k) for k in unknown)}; it accepts {sorted(accepted)}")
    return spec.create(**call)  # wraps a non-canvas exception of the factory in a FactoryError
