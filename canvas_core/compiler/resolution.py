"""Resolution pass: each connection's fn type -> an implementation and a kernel on a target.

For every active connection the requested type (``topology.resolve_fn(conn, layout)``) is
resolved through the plugin layer (``canvas_core.plugins.resolve_attention(name, ctx)``) on the
compile target (device, dtype, head dim).  The outcome is a :class:`ConnectionResolution`:

* ``requested``: the fn type asked for;
* ``implementation`` / ``provider`` / ``provider_version``: the attention spec chosen and the
  distribution (plugin) providing it;
* ``kernel`` / ``kernel_provider`` / ``kernel_version``: the kernel that executes it, or
  ``"module"`` when the type runs its own forward;
* ``rejected``: every candidate that cannot run here, each with its reasons;
* ``fallback``: True when a preferred candidate was rejected and a math-preserving one (e.g. the
  CPU reference of a CUDA kernel) was used instead; ``note`` says which.

Unknown and unavailable types fail the compile with the plugin layer's ``UnknownNameError`` /
``UnavailableError``, the message prefixed by the connection that asked for it.  A kernel
preference (``kernel="flex"``) is honoured for every connection whose type the kernel supports;
if the kernel cannot run here the compile fails with the kernel's reasons (never a silent change).

Pure Python: nothing here imports torch.  All access to the plugin layer goes through the
``_plugins_*`` helpers below, so the pass depends only on the documented plugin API.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from canvas_core.errors import CompileError, PluginError, UnavailableError

__all__ = ["ConnectionResolution", "resolve_connections", "MODULE_KERNEL", "REFERENCE_KERNEL"]

#: ``kernel`` value of a connection whose type runs its own forward (no separate kernel).
MODULE_KERNEL = "module"
#: the core's always-available reference kernel.
REFERENCE_KERNEL = "reference"
_AUTO = (None, "", "auto")


@dataclass
class ConnectionResolution:
    """How one connection runs on the compile target (see the module docstring)."""

    index: int
    src: str
    dst: str
    requested: str
    implementation: str
    provider: str = "unknown"
    provider_version: str = ""
    kernel: str = MODULE_KERNEL
    kernel_provider: str = ""
    kernel_version: str = ""
    rejected: List[Tuple[str, List[str]]] = field(default_factory=list)
    fallback: bool = False
    note: str = ""
    device: str = "cpu"
    dtype: str = "float32"

    @property
    def connection(self) -> str:
        return f"{self.src} -> {self.dst}"

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["rejected"] = [{"candidate": n, "reasons": list(r)} for n, r in self.rejected]
        return d

    def __str__(self) -> str:
        prov = f"{self.provider} {self.provider_version}".strip()
        s = (f"{self.connection}: {self.requested} -> {self.implementation} [{prov}], kernel "
             f"{self.kernel}")
        if self.rejected:
            s += "; rejected " + "; ".join(f"{n}: {', '.join(r)}" for n, r in self.rejected)
        if self.fallback:
            s += " (fallback)"
        return s


# --------------------------------------------------------------------------------------------
# plugin-layer access (the documented API; attribute names read defensively)


def _plugins():
    try:
        import canvas_core.plugins as plugins
    except ImportError as exc:  # pragma: no cover - the plugin layer ships with the core
        raise CompileError(f"the resolution pass needs canvas_core.plugins, which failed to import: {exc}") from None
    return plugins


def _api(name: str) -> Any:
    """``canvas_core.plugins.<name>`` (falling back to the submodule that defines it)."""
    obj = getattr(_plugins(), name, None)
    if obj is None:
        import importlib

        module = {"RuntimeContext": "canvas_core.plugins.spec",
                  "resolve_attention": "canvas_core.plugins.resolve"}[name]
        obj = getattr(importlib.import_module(module), name)
    return obj


def _context(device: str, dtype: str, head_dim: Optional[int], requires_grad: bool):
    return _api("RuntimeContext")(device=device, dtype=dtype, head_dim=head_dim, requires_grad=requires_grad)


def _first_attr(obj: Any, names: Sequence[str], default: Any = "") -> Any:
    for n in names:
        v = getattr(obj, n, None)
        if v not in (None, ""):
            return v
    return default


def _spec_info(spec: Any) -> Dict[str, Any]:
    """``name``, ``provider``, ``version``, ``priority`` of a registry spec."""
    if spec is None:
        return {"name": "", "provider": "", "version": "", "priority": None}
    return {
        "name": str(_first_attr(spec, ("name",), "?")),
        "provider": str(_first_attr(spec, ("provider", "distribution", "dist", "plugin"), "unknown")),
        "version": str(_first_attr(spec, ("version", "dist_version"), "")),
        "priority": getattr(spec, "priority", None),
    }


def _unsupported(spec: Any, ctx: Any) -> List[str]:
    for meth in ("unsupported_reasons", "check"):
        fn = getattr(spec, meth, None)
        if callable(fn):
            return [str(r) for r in (fn(ctx) or [])]
    return []


def _kernel_spec(name: str) -> Any:
    """The registered kernel spec ``name`` (raises the plugin layer's ``UnknownNameError``)."""
    plugins = _plugins()
    try:
        from canvas_core.plugins.host import get_host
    except ImportError:  # pragma: no cover - older plugin layer layout
        get_host = None
    if get_host is not None:
        return get_host().registry("kernels").get(name)
    for getter in ("get_kernel_spec", "kernel_spec"):
        fn = getattr(plugins, getter, None)
        if callable(fn):
            return fn(name)
    for reg_name in ("KERNEL_REGISTRY", "KERNELS"):
        reg = getattr(plugins, reg_name, None)
        if reg is not None and hasattr(reg, "get"):
            return reg.get(name)
    fn = getattr(plugins, "get_registry", None)
    if callable(fn):
        return fn("kernels").get(name)
    raise CompileError("the plugin layer exposes no kernel registry lookup; cannot honour kernel=...")


def _supports(spec: Any) -> Tuple[str, ...]:
    sup = getattr(spec, "supports", None)
    if sup is None:
        sup = (getattr(spec, "metadata", None) or {}).get("supports", ())
    return tuple(sup or ())


def _with_connection(exc: Exception, where: str) -> Exception:
    """The same error class with the connection that asked for the type prefixed."""
    msg = f"{where}: {exc}"
    try:
        new = type(exc)(msg)
    except Exception:  # pragma: no cover - constructor with other arguments
        exc.args = (msg,)
        return exc
    for k, v in vars(exc).items():  # keep structured fields (candidates, known names, ...)
        setattr(new, k, v)
    return new


# --------------------------------------------------------------------------------------------


def _record(index: int, conn: Any, fn: str, res: Any, device: str, dtype: str, *, auto: bool,
            kernel_override: Any = None, note: str = "") -> ConnectionResolution:
    att = _spec_info(getattr(res, "attention", None))
    kspec = kernel_override if kernel_override is not None else getattr(res, "kernel", None)
    kern = _spec_info(kspec)
    rejected = [(str(n), [str(r) for r in reasons]) for n, reasons in (getattr(res, "rejected", None) or [])]
    if kernel_override is not None:
        rejected = [(n, r) for n, r in rejected if n != kern["name"]]
    note = note or str(getattr(res, "note", "") or "")
    fallback = False
    if auto and rejected:
        # a rejected candidate ranked above the chosen one: the chosen one is a fallback
        # (resolve_attention only ever substitutes kernels computing the same math)
        chosen_prio = kern["priority"] if kspec is not None else None
        better = []
        for n, _ in rejected:
            try:
                prio = getattr(_kernel_spec(n), "priority", None)
            except Exception:
                prio = None
            if prio is None or chosen_prio is None or prio > chosen_prio:
                better.append(n)
        if better:
            fallback = True
            chosen = kern["name"] if kspec is not None else f"the {att['name'] or fn} module"
            note = (f"{', '.join(better)} cannot run on {device}/{dtype}; {chosen} computes the same "
                    "attention")
    return ConnectionResolution(
        index=index, src=conn.src, dst=conn.dst, requested=fn, implementation=att["name"] or fn,
        provider=att["provider"], provider_version=att["version"],
        kernel=kern["name"] if kspec is not None else MODULE_KERNEL,
        kernel_provider=kern["provider"] if kspec is not None else "",
        kernel_version=kern["version"] if kspec is not None else "",
        rejected=rejected, fallback=fallback, note=note, device=device, dtype=dtype,
    )


def _accepts_kernel() -> bool:
    try:
        return "kernel" in inspect.signature(_api("resolve_attention")).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def resolve_connections(schema: Any, *, device: str = "cpu", dtype: str = "float32",
                        head_dim: Optional[int] = None, kernel: Optional[str] = None,
                        requires_grad: bool = True) -> Dict[int, ConnectionResolution]:
    """Resolve every connection of ``schema.topology`` on the target.

    Returns connection index (in ``schema.topology.connections``) -> :class:`ConnectionResolution`.

    Raises:
        UnknownNameError / UnavailableError: a type (or the requested kernel) is unknown or
            cannot run here; the message names the connection that asked for it.
        CompileError: the requested ``kernel`` supports none of the connections' types.
    """
    topology, layout = schema.topology, schema.layout
    if topology is None or not topology.connections:
        return {}
    ctx = _context(device, dtype, head_dim, bool(requires_grad))
    prefer = None if kernel in _AUTO else str(kernel)
    native = _accepts_kernel()
    pref_spec = None
    if prefer is not None:
        pref_spec = _kernel_spec(prefer)  # UnknownNameError lists the known kernels
        reasons = _unsupported(pref_spec, ctx)
        if reasons and not native:
            raise UnavailableError(
                f"kernel {prefer!r} was requested for this compile but cannot run on {device}/{dtype}: "
                + "; ".join(reasons) + ". Install what it needs, compile for a device it supports, "
                "or drop kernel= to let the compiler choose.")
    cache: Dict[str, Any] = {}
    out: Dict[int, ConnectionResolution] = {}
    used_preference = False
    for i, conn in enumerate(topology.connections):
        fn = topology.resolve_fn(conn, layout)
        where = f"connection #{i} {conn.src!r} -> {conn.dst!r} (fn {fn!r})"
        if fn not in cache:
            try:
                if native:
                    cache[fn] = _api("resolve_attention")(fn, ctx, kernel=prefer)
                else:
                    cache[fn] = _api("resolve_attention")(fn, ctx)
            except PluginError as exc:  # unknown, unavailable, failed plugin, conflicting providers
                raise _with_connection(exc, where) from exc
        res = cache[fn]
        override, note = None, ""
        if prefer is not None:
            chosen = getattr(res, "kernel", None)
            if native:
                used_preference = used_preference or (chosen is not None and _spec_info(chosen)["name"] == prefer)
            elif fn in _supports(pref_spec):
                override, used_preference = pref_spec, True
                note = f"kernel {prefer!r} requested for this compile"
            else:
                note = f"requested kernel {prefer!r} does not support {fn!r}; automatic choice kept"
        out[i] = _record(i, conn, fn, res, device, dtype, auto=prefer is None,
                         kernel_override=override, note=note)
    if prefer is not None and not used_preference:
        kinds = sorted({r.requested for r in out.values()})
        raise CompileError(
            f"kernel {prefer!r} was requested but executes none of this program's attention types "
            f"{kinds} (it supports {list(_supports(pref_spec))}); drop kernel= or pick a kernel "
            "that supports them.")
    return out
