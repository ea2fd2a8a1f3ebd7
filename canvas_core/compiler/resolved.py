"""The resolution records a plan carries (torch-free).

* :class:`~canvas_core.plugins.resolve.ResolvedGroup`: THE record of the decision, one per fn
  group of an :class:`~canvas_core.compiler.plan.ExecutionPlan`, frozen, stored as
  ``plan.groups[fn].resolved``; it is what ``canvas_core.plugins.resolve_attention`` returns.
* :class:`ConnectionResolution`: a report row, the same decision seen from one connection (its
  index, source and destination), computed from the group's record on demand
  (``plan.resolutions``, ``CompiledProgram.resolutions``), never stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Tuple

from canvas_core.plugins.builtin import REFERENCE_KERNEL
from canvas_core.plugins.resolve import MODULE_KERNEL, ResolvedGroup

__all__ = ["ResolvedGroup", "ConnectionResolution", "MODULE_KERNEL", "REFERENCE_KERNEL"]


@dataclass(frozen=True)
class ConnectionResolution:
    """The resolution of one connection, as the report shows it.

    ``requested`` is the connection's fn type; ``implementation`` / ``provider`` /
    ``provider_version`` name the attention entry and the distribution behind it; ``kernel`` /
    ``kernel_provider`` / ``kernel_version`` the kernel (``"module"``: none, the type's forward
    runs); ``rejected`` lists ``(candidate, [reasons])``; ``fallback``, ``note``, ``clash`` and
    ``no_gradient_at_init`` as in :class:`ResolvedGroup`.
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
    clash: List[str] = field(default_factory=list)
    no_gradient_at_init: str = ""

    @classmethod
    def of(cls, group: ResolvedGroup, index: int, connection: Any) -> "ConnectionResolution":
        """The row of connection ``index`` (a ``Connection``) computed from its group's record."""
        att, k = group.attention, group.kernel
        return cls(index=index, src=connection.src, dst=connection.dst, requested=group.fn,
                   implementation=att.name, provider=att.provider, provider_version=att.version,
                   kernel=group.kernel_name, kernel_provider=k.provider if k is not None else "",
                   kernel_version=k.version if k is not None else "",
                   rejected=[(n, list(r)) for n, r in group.rejected], fallback=group.fallback,
                   note=group.note, device=group.device, dtype=group.dtype, clash=list(group.clash),
                   no_gradient_at_init=group.no_gradient_at_init)

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
        if self.clash:
            s += " (name clash: " + " ".join(self.clash) + ")"
        return s
