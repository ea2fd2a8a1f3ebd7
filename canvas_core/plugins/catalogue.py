"""``ATTENTION_TYPES``: the catalogue of attention types, derived live from the registry.

canvas-engineering exposed ``ATTENTION_TYPES`` as a dict name -> description string.  Here each
value is an :class:`AttentionTypeInfo`, a ``str`` whose value is the description (so code that
printed or compared the strings keeps working) carrying ``family``, ``complexity``,
``description``, ``provider`` and the ``spec``.  It is a view: registering a type makes it appear.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator, Optional

from canvas_core.plugins.spec import Spec

__all__ = ["AttentionTypeInfo", "AttentionTypesView", "ATTENTION_TYPES"]


class AttentionTypeInfo(str):
    """Description string of an attention type, with its catalogue fields as attributes."""

    name: str
    family: Optional[str]
    complexity: Optional[str]
    description: str
    provider: str
    spec: Spec

    def __new__(cls, spec: Spec) -> "AttentionTypeInfo":
        obj = super().__new__(cls, spec.description or "")
        obj.name = spec.name
        obj.family = spec.family
        obj.complexity = spec.complexity
        obj.description = spec.description or ""
        obj.provider = spec.provider
        obj.spec = spec
        return obj

    def __reduce__(self):  # pickles as the plain description string
        return (str, (str(self),))


class AttentionTypesView(Mapping):
    """Read-only ``name -> AttentionTypeInfo`` over the default host's attention registry."""

    def _reg(self):
        from canvas_core.plugins.host import get_host

        return get_host().registry("attention")

    def __getitem__(self, name: str) -> AttentionTypeInfo:
        return AttentionTypeInfo(self._reg().get(name))

    def get(self, name: str, default: Any = None) -> Any:
        reg = self._reg()
        return AttentionTypeInfo(reg.get(name)) if name in reg else default

    def __contains__(self, name: object) -> bool:
        return name in self._reg()

    def __iter__(self) -> Iterator[str]:
        return iter(self._reg().names())

    def __len__(self) -> int:
        return len(self._reg())

    def __repr__(self) -> str:
        return "ATTENTION_TYPES(" + repr({k: str(v) for k, v in self.items()}) + ")"


ATTENTION_TYPES = AttentionTypesView()
