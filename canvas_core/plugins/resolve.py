"""Resolution: an attention type name + a target -> the frozen :class:`ResolvedGroup` of how it
runs there (the compiler keeps one per fn group, ``plan.groups[fn].resolved``); building a type."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from canvas_core.errors import CanvasTypeError, FactoryTypeError, PluginLoadError, UnavailableError
from canvas_core.plugins.builtin import SOFTMAX_FAMILY
from canvas_core.plugins.hints import pip_name
from canvas_core.plugins.host import PluginHost, get_host
from canvas_core.plugins.spec import IN_PROCESS, RuntimeContext, Spec

#: values of ``kernel=`` that leave the choice to the resolver.
AUTO_KERNEL = (None, "", "auto")
#: ``kernel_name`` of a type whose own module computes it (no separate kernel was chosen).
MODULE_KERNEL = "module"


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: it holds registry entries
class ResolvedGroup:
    """How fn type ``fn`` runs on one target, decided once.  ``attention`` and ``kernel`` are the
    registry entries themselves (``kernel`` None: the type's own module runs), so builders never
    look a name up again; ``rejected``: ``((candidate, (reason, ...)), ...)``; ``fallback``: a
    better-ranked kernel could not run here and something with the same math was chosen (``note``
    says what); ``clash``: refused plugin registrations of the type's (or kernel's) name that a
    builtin keeps; ``preview``: resolved for a device this machine lacks (nothing is built from it)."""

    fn: str
    attention: Spec
    kernel: Optional[Spec] = None
    rejected: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    fallback: bool = False
    note: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    preview: bool = False
    clash: Tuple[str, ...] = ()
    no_gradient_at_init: str = ""  # set by the compiler when the type declares learns_at_init=False

    @property
    def fused(self) -> bool:
        """Whether the type belongs to the softmax family (shared projections + one kernel call)."""
        return self.fn in SOFTMAX_FAMILY

    @property
    def kernel_name(self) -> str:
        return self.kernel.name if self.kernel is not None else MODULE_KERNEL

    @property
    def implementation(self) -> str:
        return self.attention.name

    def module_kwargs(self) -> Dict[str, Any]:
        """Keywords for a non-fused type's module: ``{"kernel": name}`` when a kernel was chosen."""
        return {} if self.kernel is None else {"kernel": self.kernel.name}

    def to_dict(self) -> Dict[str, Any]:
        k = self.kernel
        return {
            "fn": self.fn, "implementation": self.attention.name, "provider": self.attention.provider,
            "provider_version": self.attention.version, "kernel": self.kernel_name,
            "kernel_provider": k.provider if k is not None else "",
            "rejected": [{"candidate": n, "reasons": list(r)} for n, r in self.rejected],
            "fallback": self.fallback, "note": self.note, "device": self.device, "dtype": self.dtype,
            "preview": self.preview, "clash": list(self.clash), "no_gradient_at_init": self.no_gradient_at_init,
        }

    def __str__(self) -> str:
        return f"{self.fn} -> {self.attention.describe_provider()}, kernel {self.kernel_name}"


def _kernel_reasons(spec: Spec, ctx: RuntimeContext, conflicts: Dict[str, str]) -> List[str]:
    conflict = conflicts.get(spec.name)
    broken = spec.factory_problem()
    return ([conflict] if conflict else []) + ([broken] if broken else []) + spec.unsupported_reasons(ctx)


def _refuse_broken(spec: Spec) -> None:
    """The :class:`PluginLoadError` that using ``spec`` would raise, when its lazy factory's module
    cannot be found (``BROKEN`` in ``canvas plugins``; found without importing anything).  A spec
    missing a required package is left to the UnavailableError with its install hint."""
    problem = spec.factory_problem()
    if not problem or spec.missing_requirements():
        return
    fix = (f"fix the factory path given to register_{'attention' if spec.kind == 'attention' else 'kernel'}"
           if spec.distribution == IN_PROCESS else
           f"reinstall or fix {spec.distribution}, or block it with CANVAS_BLOCK_PLUGINS")
    raise PluginLoadError(
        f"{spec.kind} {spec.name!r} (factory {spec.factory!r}, from {spec.describe_provider()}) failed "
        f"to load: {problem}; `canvas plugins` lists it as BROKEN. To fix: {fix}.")


def _hints(specs: List[Spec], reasons: List[List[str]]) -> str:
    """`` To fix: <hints>.`` for an unavailable error, or "" when there is nothing to suggest."""
    pkgs = sorted({m for s in specs for m in s.missing_requirements()})
    said = "\n".join(r for rs in reasons for r in rs)
    hints = [hint for hint, wanted in (
        (f"install the missing package(s) with pip install {' '.join(pip_name(p) for p in pkgs)}", pkgs),
        ("run on a device the implementation supports", "CUDA" in said or "runs on" in said),
        ("use a supported dtype", "dtype" in said)) if wanted]
    if not hints:
        return ""
    # one sentence whatever the number of hints: "A.", "A or B.", "A, B or C."
    text = hints[0] if len(hints) == 1 else ", ".join(hints[:-1]) + " or " + hints[-1]
    return " To fix: " + text[0].upper() + text[1:] + "."


def resolve_attention(name: str, ctx: Any = None, kernel: Optional[str] = None, *,
                      host: Optional[PluginHost] = None) -> ResolvedGroup:
    """Choose how attention type ``name`` runs in ``ctx`` (a :class:`RuntimeContext`, dict, device
    string or None for CPU/float32/training), never by a silent change of the math: kernels whose
    ``supports`` has the type are tried by descending ``priority``, the first that can run wins
    (none: the type's own module runs).  ``kernel``: None / ``"auto"`` to choose, or a kernel name to
    insist on (it must be able to run; one not supporting the type is only recorded in ``rejected``).
    A kernel whose lazy factory module cannot be found is a rejected candidate (the reason recorded).
    Raises UnknownNameError (no such type or kernel: closest match and hint), PluginLoadError (its
    plugin failed to load, or the type's or the requested kernel's factory module cannot be found:
    the error using it would raise, found without importing it), UnavailableError (it cannot run in
    ``ctx``: every candidate and why)."""
    host = host or get_host()
    ctx = RuntimeContext.coerce(ctx)
    spec = host.lookup("attention", name)
    kernels = host.registry("kernels").snapshot()  # one state: candidates, clashes and the kernel's shadowing agree
    kconflicts = kernels.conflicts()
    _refuse_broken(spec)
    cands = sorted((k for k in kernels.specs() if name in k.supports), key=lambda k: -k.priority)
    own = spec.unsupported_reasons(ctx)
    if own:
        rows = [(f"{name} ({spec.describe_provider()})", own)]
        rows += [(f"kernel {k.name} ({k.describe_provider()})", _kernel_reasons(k, ctx, kconflicts) or ["could run"])
                 for k in cands]
        raise UnavailableError(
            f"attention type {name!r} cannot run on {ctx.describe()}. Candidates: "
            + "; ".join(f"{n}: {', '.join(r)}" for n, r in rows) + "."
            + _hints([spec, *cands], [r for _, r in rows]))
    device, dtype = "cpu" if ctx.device is None else str(ctx.device), ctx.dtype_name
    rejected: List[Tuple[str, Tuple[str, ...]]] = []
    chosen: Optional[Spec] = None
    note, fallback = "", False
    if kernel not in AUTO_KERNEL:
        kspec = host.lookup("kernels", str(kernel))
        if name not in kspec.supports:
            rejected.append((kspec.name, (f"does not support {name!r} (supports: {', '.join(kspec.supports) or 'nothing'})",)))
            note = f"kernel {kspec.name!r} does not execute {name!r}; the type's own module runs"
        elif reasons := _kernel_reasons(kspec, ctx, kconflicts):
            _refuse_broken(kspec)
            raise UnavailableError(
                f"kernel {kspec.name!r} ({kspec.describe_provider()}) was requested for attention type "
                f"{name!r} but cannot run on {ctx.describe()}: {'; '.join(reasons)}."
                + _hints([kspec], [reasons]) + " Or drop kernel= to let canvas-core choose.")
        else:
            chosen = kspec
    else:
        for k in cands:  # by descending priority; the first that can run wins
            reasons = _kernel_reasons(k, ctx, kconflicts)
            if not reasons:
                chosen = k
                break
            rejected.append((k.name, tuple(reasons)))
        outranked = [k.name for k in cands[:len(rejected)] if chosen is None or k.priority > chosen.priority]
        if outranked:  # only ever replaced by something computing the same attention
            fallback = True
            instead = chosen.name if chosen is not None else f"the {spec.name or name} module"
            note = f"{', '.join(outranked)} cannot run on {device}/{dtype}; {instead} computes the same attention"
    clash = tuple(host.registry("attention").shadowed().get(name, ()))
    if chosen is not None:
        clash += tuple(kernels.shadowed().get(chosen.name, ()))
    return ResolvedGroup(fn=name, attention=spec, kernel=chosen, rejected=tuple(rejected), fallback=fallback,
                         note=note, device=device, dtype=dtype, preview=ctx.preview, clash=clash)


def _signature(factory: Any) -> Optional[inspect.Signature]:
    """``factory``'s call signature (a class: its constructor's; a ``functools.partial``: what is
    left to pass), or None when Python cannot read one (some builtins and C extensions)."""
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):
        return None


def _keywords(sig: inspect.Signature) -> Optional[set]:
    """The keyword names ``sig`` takes; None for ``**kwargs``."""
    params = sig.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _binds(sig: inspect.Signature, *args: Any, **kwargs: Any) -> bool:
    try:
        sig.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def _argument_error(exc: BaseException) -> bool:
    """Whether a factory's TypeError says it refused keyword arguments (nothing was built)."""
    cause = exc.__cause__ if isinstance(exc.__cause__, TypeError) else None
    return cause is not None and "keyword argument" in str(cause)


def _named(sig: inspect.Signature, name: str) -> bool:
    p = sig.parameters.get(name)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def build_attention(spec: Spec, d_model: int, n_heads: int = 4, dropout: float = 0.0, **kwargs: Any) -> Any:
    """Build attention type ``spec`` (no registry lookup): ``factory(d_model=, n_heads=, dropout=,
    **kwargs)``; a factory without ``n_heads`` is called without it, one without ``dropout`` only
    when it is 0.  A factory that has no ``d_model`` parameter and cannot be called so, but takes
    three positional arguments (canvas-engineering's protocol, e.g. ``__init__(self, dim, heads=4,
    p=0.0)``), is called ``factory(d_model, n_heads, dropout, **kwargs)`` as canvas-engineering
    calls it; so is a factory without a readable signature (a builtin) that refuses the keywords.
    Raises UnavailableError (missing package), CanvasTypeError (a factory that can be called
    neither way), PluginLoadError / FactoryError (import or build failed)."""
    if isinstance(d_model, int) and not isinstance(d_model, bool):  # before any plugin allocates weights
        from canvas_core.schema.limits import check_size

        check_size("width", d_model, f"attention type {spec.name!r} d_model")
    if spec.missing_requirements():
        return spec.create(d_model=d_model, n_heads=n_heads, dropout=dropout, **kwargs)  # raises
    factory = spec.load()
    call = {"d_model": d_model, "n_heads": n_heads, "dropout": dropout, **kwargs}
    sig = _signature(factory)
    if sig is None:  # nothing to read: the documented keyword call, positionally when it refuses keywords
        try:
            return spec.create(**call)
        except FactoryTypeError as exc:  # the factory's own TypeError, chained
            if not _argument_error(exc):
                raise
            try:
                return spec.create(d_model, n_heads, dropout, **kwargs)
            except FactoryTypeError:
                raise exc from exc.__cause__
    accepted = _keywords(sig)
    if accepted is not None:
        if "n_heads" not in accepted:
            call.pop("n_heads")
        if "dropout" not in accepted and not dropout:
            call.pop("dropout")
    if not _named(sig, "d_model") and not _binds(sig, **call):  # not written for the keyword call
        if _binds(sig, d_model, n_heads, dropout, **kwargs):
            return spec.create(d_model, n_heads, dropout, **kwargs)  # canvas-engineering's positional call
        if _binds(sig, d_model, n_heads, dropout):
            bad = [k for k in kwargs if not _binds(sig, d_model, n_heads, dropout, **{k: kwargs[k]})]
            raise CanvasTypeError(
                f"attention type {spec.name!r} ({spec.factory_path}) is called positionally, "
                f"factory(d_model, n_heads, dropout, **options), as canvas-engineering calls it, and "
                f"does not take the option(s) {', '.join(map(repr, bad or sorted(kwargs)))}; its "
                f"parameters are {list(sig.parameters)}")
    unknown = sorted(set(call) - accepted) if accepted is not None else []
    if unknown == ["dropout"]:
        raise CanvasTypeError(
            f"attention type {spec.name!r} ({spec.factory_path}) takes no dropout argument; "
            f"create it with dropout=0.0 (got {dropout!r})")
    if unknown:
        raise CanvasTypeError(
            f"attention type {spec.name!r} ({spec.factory_path}) does not take "
            f"{', '.join(repr(k) for k in unknown)}; it accepts {sorted(accepted or ())}. Write the "
            "factory as factory(d_model, n_heads=4, dropout=0.0, **options), or with three positional "
            "parameters first (canvas-engineering's factory(d_model, n_heads, dropout))")
    return spec.create(**call)  # wraps a non-canvas exception of the factory in a FactoryError
