"""What the resolution pass hands to everything that executes a plan (torch-free).

* :class:`ResolvedGroup`: THE record of the decision, one per fn group of an
  :class:`~canvas_core.compiler.plan.ExecutionPlan`, frozen, stored as ``plan.groups[fn].resolved``.  It holds the registry entries themselves (the
  attention type's :class:`~canvas_core.plugins.spec.Spec` and the kernel's), so that code which
  builds modules from a plan instantiates them from these entries and never asks the registry for
  a name again.
* :class:`ConnectionResolution`: a report row, the same decision seen from one connection (its
  index, source and destination), computed from the group's record on demand
  (``plan.resolutions``, ``CompiledProgram.resolutions``), never stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from canvas_core.plugins.builtin import REFERENCE_KERNEL, SOFTMAX_FAMILY
from canvas_core.plugins.spec import Spec

__all__ = ["ResolvedGroup", "ConnectionResolution", "MODULE_KERNEL", "REFERENCE_KERNEL"]

#: ``kernel`` shown for a type whose own module computes it (no separate kernel was chosen).
MODULE_KERNEL = "module"


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: it holds registry entries
class ResolvedGroup:
    """How one fn type of a plan runs on the compile target; decided once, read by the runtime.

    Where it lives: ``plan.groups[fn].resolved`` (``None`` until the plan went through the
    resolution pass, :func:`canvas_core.compiler.resolution.resolve_plan`; ``ProgramCompiler``
    runs it, and ``CanvasAttention`` runs it itself on a plan nobody resolved).

    Attributes:
        fn: the fn type every connection of the group asked for.
        attention: the attention type's registry entry (a ``Spec``; ``attention.create(...)`` /
            :func:`canvas_core.plugins.resolve.build_attention` instantiate it).
        kernel: the kernel's registry entry, or ``None`` when the type's own module computes it.
        rejected: ``((candidate, (reason, ...)), ...)``: every candidate that was not chosen.
        fallback: True when a better-ranked kernel could not run here and a kernel (or the
            module) with the same math was used instead; ``note`` says which.
        note: free text for the report.
        device, dtype: the target it was resolved for.
        preview: True when it was resolved as a preview for a device this machine lacks (the
            plan shows what that device would run; the runtime refuses to build from it).

    Building from it (what ``CanvasAttention`` does, and what a backbone processor does with its
    own q/k/v):

    * a group of the softmax family (``fused`` is True) runs one kernel module per group::

          from canvas_core.runtime.kernels import kernel_for
          kern = kernel_for(plan, fn, n_heads=H, head_dim=d)     # nn.Module
          out = kern(q, k, v, scale=1 / d ** 0.5)                # (B, H, N, d), canonical order

      ``kernel_for`` instantiates ``kernel`` (``kernel.create(group, plan, n_heads=, head_dim=)``)
      or, when it is None, the core's reference kernel;
    * any other type builds its module from ``attention`` with :meth:`module_kwargs` added
      (``kernel=<name>`` when a kernel was chosen for it).
    """

    fn: str
    attention: Spec
    kernel: Optional[Spec] = None
    rejected: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    fallback: bool = False
    note: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    preview: bool = False

    @property
    def fused(self) -> bool:
        """Whether the type belongs to the softmax family (shared projections + one kernel call)."""
        return self.fn in SOFTMAX_FAMILY

    @property
    def kernel_name(self) -> str:
        """The kernel's registry name, or ``"module"`` when the type runs its own forward."""
        return self.kernel.name if self.kernel is not None else MODULE_KERNEL

    @property
    def implementation(self) -> str:
        return self.attention.name

    def module_kwargs(self) -> Dict[str, Any]:
        """Extra keyword arguments for a non-fused type's module: ``{"kernel": name}`` when the
        resolution chose a kernel for it, else nothing."""
        return {} if self.kernel is None else {"kernel": self.kernel.name}

    def record(self, index: int, connection: Any) -> "ConnectionResolution":
        """This decision as the report row of connection ``index``."""
        att, k = self.attention, self.kernel
        return ConnectionResolution(
            index=index, src=connection.src, dst=connection.dst, requested=self.fn,
            implementation=att.name, provider=att.provider, provider_version=att.version,
            kernel=self.kernel_name, kernel_provider=k.provider if k is not None else "",
            kernel_version=k.version if k is not None else "",
            rejected=[(n, list(r)) for n, r in self.rejected], fallback=self.fallback,
            note=self.note, device=self.device, dtype=self.dtype)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "fn": self.fn, "implementation": self.attention.name, "provider": self.attention.provider,
            "provider_version": self.attention.version, "kernel": self.kernel_name,
            "kernel_provider": self.kernel.provider if self.kernel is not None else "",
            "rejected": [{"candidate": n, "reasons": list(r)} for n, r in self.rejected],
            "fallback": self.fallback, "note": self.note, "device": self.device, "dtype": self.dtype,
            "preview": self.preview,
        }

    def __str__(self) -> str:
        return f"{self.fn} -> {self.attention.describe_provider()}, kernel {self.kernel_name}"


@dataclass(frozen=True)
class ConnectionResolution:
    """The resolution of one connection, as the report shows it.

    ``requested`` is the connection's fn type; ``implementation`` / ``provider`` /
    ``provider_version`` name the attention entry and the distribution behind it; ``kernel`` /
    ``kernel_provider`` / ``kernel_version`` the kernel (``"module"``: none, the type's forward
    runs); ``rejected`` lists ``(candidate, [reasons])``; ``fallback`` and ``note`` as in
    :class:`ResolvedGroup`.
    """

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
