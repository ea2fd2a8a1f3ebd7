"""The registry a plugin's hook receives (:class:`PluginScopedRegistry`): a view of one of the
host's registries that credits every name added through it to the plugin running the hook, and
warns when a builtin keeps a name the plugin asked for.  Used by :mod:`canvas_core.plugins.host`."""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Tuple

from canvas_core.plugins.loading import PluginRecord
from canvas_core.plugins.registry import Registry
from canvas_core.plugins.spec import Spec

__all__ = ["PluginScopedRegistry"]


class PluginScopedRegistry:
    """What a plugin's hook receives: ``add`` credits the plugin's distribution; a clash is warned
    about when a builtin keeps the name (the plugin's record reads its clashes off the registries,
    :meth:`~canvas_core.plugins.host.PluginHost.conflicts_of`)."""

    def __init__(self, registry: Registry, record: PluginRecord, strict: bool) -> None:
        self._registry, self._record, self._strict = registry, record, strict
        self.kind, self.noun = registry.kind, registry.noun

    def add(self, name: Any, factory: Any = None, *, override: bool = False, **metadata: Any) -> Optional[Spec]:
        return self.insert(name, factory, metadata, override)[0]

    def insert(self, name: Any, factory: Any, metadata: Dict[str, Any], override: bool,
               module: Optional[str] = None) -> Tuple[Optional[Spec], Spec]:
        """``(stored spec or None when refused, the spec made)``."""
        rec, reg = self._record, self._registry
        if isinstance(name, str):  # noted first: a name refused as malformed is still this plugin's
            rec.attempted.setdefault(self.kind, []).append(name)
        spec = reg.make_spec(name, factory, metadata, distribution=rec.distribution, version=rec.version,
                             plugin=rec.name, module=module)
        stored, clash = reg.add_from_plugin(spec, override=override, strict=self._strict)
        if clash is not None:
            if spec.name in reg.shadowed():  # never a silent shadowing of a plugin's type
                warnings.warn_explicit(
                    f"{rec.describe()} registers {self.noun} {spec.name!r}, a name of canvas-core's builtins: "
                    f"refused, {reg.get(spec.name).describe_provider()} stays in use. {clash}", UserWarning,
                    filename=f"<{rec.describe()}>", lineno=0, module="canvas_core.plugins")
        return stored, spec
