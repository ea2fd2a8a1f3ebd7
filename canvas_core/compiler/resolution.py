"""The resolution pass: each fn group of a plan gets its implementation and kernel, once.

Lowering has already read every connection's fn type (``plan.fn_of_connection``, grouped in
``plan.groups``).  :func:`resolve_plan` asks the plugin layer
(:func:`canvas_core.plugins.resolve_attention`) once per group for the target (device, dtype,
head dim, whether gradients are needed) and returns a new plan whose groups carry the answer, one
frozen :class:`~canvas_core.compiler.resolved.ResolvedGroup` per fn group; the plan it was given
is not changed.  The report's per-connection rows
(:class:`~canvas_core.compiler.resolved.ConnectionResolution`, ``plan.resolutions``) are computed
from those records.

Failures keep the plugin layer's error class (``UnknownNameError``, ``UnavailableError``, ...)
with the first connection that asked for the type put in front of the message.  A requested
kernel (``kernel="flex"``) is used for every type it supports; a kernel that can run none of the
program's types is a :class:`CompileError`, never a silent change of the math.

Torch-free: the plugin layer is reached through its public functions, nothing else.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, Iterable, Optional

from canvas_core.compiler.lowering import lower
from canvas_core.compiler.resolved import MODULE_KERNEL, REFERENCE_KERNEL, ConnectionResolution, ResolvedGroup
from canvas_core.errors import CanvasTypeError, CompileError, PluginError
from canvas_core.plugins import RuntimeContext, get_kernel_spec, resolve_attention
from canvas_core.plugins.resolve import AUTO_KERNEL

__all__ = ["ConnectionResolution", "ResolvedGroup", "resolve_plan", "resolve_connections", "MODULE_KERNEL",
           "REFERENCE_KERNEL", "warn_unapplied_labels"]


def warn_unapplied_labels(labelled: Iterable[Any], owner: str) -> None:
    """One ``UserWarning`` for the ``(name, write_mode, trigger)`` entries of ``labelled`` that
    set a write mode other than ``"add"`` or a trigger.  Both are labels a schema or checkpoint
    keeps (canvas-engineering writes them too) but nothing at run time reads them: such a
    connection runs exactly like one with ``write_mode="add"`` and no trigger.  The text is the same
    for the same connections, so Python's warning filter shows it once, not once per layer."""
    odd = [f"{name} (" + ", ".join(
        ([f"write_mode={mode!r}"] if mode != "add" else []) + ([f"trigger={trig!r}"] if trig else [])) + ")"
        for name, mode, trig in labelled if mode != "add" or trig]
    if not odd:
        return
    shown = "; ".join(odd[:5]) + (f"; and {len(odd) - 5} more" if len(odd) > 5 else "")
    warnings.warn(
        f"{owner}: {shown}: write_mode and trigger are recorded in the schema / program (and its "
        "checkpoints) but not applied: the layer runs these connections exactly as with write_mode='add' "
        "and no trigger (its keys join its queries' attention whenever both regions run). Drop them, "
        "or keep them knowing they only document an intent",
        UserWarning, stacklevel=3)


def _with_connection(exc: Exception, where: str) -> Exception:
    """An error of the same class whose message starts with the connection that asked."""
    msg = f"{where}: {exc}"
    try:
        new = type(exc)(msg)
    except Exception:  # pragma: no cover - an error class with another constructor
        exc.args = (msg,)
        return exc
    for k, v in vars(exc).items():  # structured fields (candidates, known names, ...) survive
        setattr(new, k, v)
    return new


def declared_no_gradient(fn: str, spec: Any) -> str:
    """Why ``spec``'s type cannot learn, when it declares so: ``learns_at_init=False`` as a
    registration keyword (``spec.metadata``) or, for a factory that is already an object (an
    in-process class), as its class attribute.  ``""`` when nothing declares it: the compiler does
    not build modules, so only a declaration is known here (a canvas layer / backbone probes the
    built module and adds what it finds to the report).  Reading it imports nothing."""
    declared = spec.metadata.get("learns_at_init")
    if declared is None:
        loaded = spec.factory if not isinstance(spec.factory, str) else getattr(spec, "_loaded", None)
        declared = getattr(loaded, "learns_at_init", None) if loaded is not None else None
    if declared is None or declared is True:
        return ""
    if declared is not False:
        raise CanvasTypeError(
            f"attention type {fn!r} ({spec.provider}): learns_at_init must be True, False or absent, got "
            f"{declared!r}; declare learns_at_init=False only for a type none of whose parameters gets a "
            "gradient at initialisation")
    return (f"{fn!r} declares learns_at_init=False: no parameter of it receives a gradient at "
            "initialisation (in a canvas layer or inside a backbone); trained, this connection cannot learn")


def resolve_plan(plan: Any, *, device: Any = "cpu", dtype: str = "float32", head_dim: Optional[int] = None,
                 kernel: Optional[str] = None, requires_grad: bool = True, only: Optional[Iterable[str]] = None,
                 kernel_must_apply: bool = True, preview: bool = False) -> Any:
    """Resolve every fn group of ``plan`` on the target; return the resolved plan.

    Returns a new :class:`~canvas_core.compiler.plan.ExecutionPlan` sharing ``plan``'s arrays, in
    which ``groups[fn].resolved`` holds each resolved group's :class:`ResolvedGroup` (groups left
    out by ``only`` keep what they had) and ``resolutions`` the per-connection rows derived from
    them.  ``plan`` itself is never changed.

    Args:
        device, dtype, head_dim, requires_grad: the target (see ``RuntimeContext``).
        kernel: a kernel name to use for every type it supports (None / "auto": choose).
        only: resolve just these fn types (default: every group).
        kernel_must_apply: refuse a ``kernel`` that executes none of the resolved types (the
            compiler's rule for a user's request); False when the preference is the caller's own.
        preview: resolve as if ``device`` were present here (see ``RuntimeContext.preview``).

    Raises:
        UnknownNameError / UnavailableError / PluginLoadError: a type (or the requested kernel)
            is unknown or cannot run here; the message names the connection that asked for it.
        CompileError: the requested ``kernel`` executes none of the plan's types.
    """
    if not plan.groups:  # nothing to run: nothing to resolve (and no kernel to check)
        return plan
    warn_unapplied_labels(((f"connection {c.src!r} -> {c.dst!r}", c.write_mode, None)
                           for c in plan.topology.connections), "attention layer")
    device = "cpu" if device is None else str(device)  # a torch.device prints as its name
    ctx = RuntimeContext(device=device, dtype=dtype, head_dim=head_dim, requires_grad=bool(requires_grad),
                         preview=bool(preview))
    prefer = None if kernel in AUTO_KERNEL else str(kernel)
    pref_spec = get_kernel_spec(prefer) if prefer is not None else None  # UnknownNameError lists kernels
    connections = list(plan.topology.connections)
    wanted = None if only is None else set(only)
    resolved: Dict[str, ResolvedGroup] = {}
    for fn, group in plan.groups.items():
        if wanted is not None and fn not in wanted:
            continue
        try:
            res = resolve_attention(fn, ctx, kernel=prefer)  # the group's frozen record
        except PluginError as exc:  # unknown, unavailable, failed plugin, conflicting providers
            i = min(group.connections) if group.connections else 0
            c = connections[i]
            raise _with_connection(exc, f"connection #{i} {c.src!r} -> {c.dst!r} (fn {fn!r})") from exc
        stuck = declared_no_gradient(fn, res.attention)
        if stuck:  # known before any module is built: the report flags it at compile time
            res = dataclasses.replace(res, note=f"{res.note}; {stuck}" if res.note else stuck,
                                      no_gradient_at_init=stuck)
        resolved[fn] = res
    used = any(g.kernel is not None and g.kernel.name == prefer for g in resolved.values())
    if kernel_must_apply and pref_spec is not None and not used:
        raise CompileError(
            f"kernel {prefer!r} was requested but executes none of this program's attention types "
            f"{sorted(resolved)} (it supports {list(pref_spec.supports)}); drop kernel= or pick a kernel "
            "that supports them.")
    groups = {fn: dataclasses.replace(g, resolved=resolved[fn]) if fn in resolved else g
              for fn, g in plan.groups.items()}
    return dataclasses.replace(plan, groups=groups)


def resolve_connections(schema: Any, *, device: str = "cpu", dtype: str = "float32",
                        head_dim: Optional[int] = None, kernel: Optional[str] = None,
                        requires_grad: bool = True) -> Dict[int, ConnectionResolution]:
    """Resolve the connections of ``schema.topology`` on the target without keeping a plan.

    The same road as the compiler (:func:`~canvas_core.compiler.lowering.lower`, then
    :func:`resolve_plan`); returns connection index -> :class:`ConnectionResolution` (the resolved
    plan's ``resolutions``).
    """
    topology, layout = schema.topology, schema.layout
    if topology is None or not topology.connections:
        return {}
    return resolve_plan(lower(topology, layout), device=device, dtype=dtype, head_dim=head_dim,
                        kernel=kernel, requires_grad=requires_grad).resolutions
