"""Find the backbone adapter for a model through the plugin registry.

Adapters are registered by plugins with ``registry.add(name, "pkg.module:Adapter",
model_classes=("diffusers.CogVideoXTransformer3DModel",), ...)``. The plugin host (pluggy's
entry-point loader, the only one in canvas-core) fills the ``backbones`` registry; this module
only reads it. Matching uses class names only, so looking up an adapter never imports a plugin
whose model class is not in the model's MRO.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from canvas_core.errors import BackboneError, CanvasTypeError
from canvas_core.looping.adapter import BackboneAdapter, GenericAdapter, class_matches
from canvas_core.plugins import get_registry

__all__ = ["BackboneEntry", "backbone_entries", "find_adapter", "resolve_adapter"]


@dataclass
class BackboneEntry:
    """One registered backbone adapter: its name, lazy factory, metadata and provider."""

    name: str
    factory: Any
    metadata: Dict[str, Any] = field(default_factory=dict)
    provider: str = ""
    spec: Optional[Any] = field(default=None, repr=False)

    @property
    def patterns(self) -> Tuple[str, ...]:
        pats: List[str] = []
        for key in ("model_classes", "matches"):
            v = self.metadata.get(key)
            if isinstance(v, str):
                pats.append(v)
            elif isinstance(v, (tuple, list)):
                pats.extend(str(x) for x in v)
        return tuple(pats)

    def load(self) -> Any:
        """The adapter class (or object); a plugin that fails to import raises the plugin
        layer's ``PluginLoadError`` naming the plugin."""
        if self.spec is not None:
            return self.spec.load()
        return self.factory


def backbone_entries() -> List[BackboneEntry]:
    """Every registered backbone adapter (name, lazy factory, metadata), sorted by name."""
    out: List[BackboneEntry] = []
    for spec in get_registry("backbones").specs():
        meta = dict(spec.metadata or {})
        out.append(BackboneEntry(spec.name, spec.factory, meta, str(spec.provider), spec))
    return out


def find_adapter(model: Any) -> BackboneAdapter:
    """The registered adapter matching ``model``'s class, else the generic adapter when the model
    has a ``transformer_blocks`` / ``blocks`` list, else :class:`BackboneError`.  A model wrapped
    by ``torch.compile`` is matched by the model it holds."""
    if type(model).__name__ == "OptimizedModule":
        from canvas_core.runtime.compiled_names import unwrap_compiled

        model = unwrap_compiled(model)
    entries = backbone_entries()
    for e in entries:
        if e.patterns and class_matches(model, e.patterns):
            return _instantiate(e.load(), e.name)
    for e in entries:  # adapters that only know how to recognise models with code
        if not e.patterns:
            obj = e.load()
            m = getattr(obj, "matches", None)
            if callable(m) and m(model):
                return _instantiate(obj, e.name)
    if GenericAdapter.matches(model):
        return GenericAdapter()
    from canvas_core.runtime.compiled_names import wrapper_hint

    names = ", ".join(sorted(e.name for e in entries)) or "none"
    raise BackboneError(
        f"no backbone adapter for {type(model).__module__}.{type(model).__qualname__} "
        f"(installed adapters: {names}). Install the plugin for this model family (e.g. "
        "`pip install canvas-plugin-cogvideox`), pass adapter=... to graft_looped_blocks, or "
        f"expose the blocks as `transformer_blocks` / `blocks` (nn.ModuleList).{wrapper_hint(model)}"
    )


def _instantiate(obj: Any, name: str) -> BackboneAdapter:
    adapter = obj() if isinstance(obj, type) else obj
    if not hasattr(adapter, "blocks") or not hasattr(adapter, "hidden_size"):
        raise BackboneError(
            f"backbone adapter {name!r} is not a BackboneAdapter ({type(adapter).__name__})"
        )
    return adapter


def resolve_adapter(model: Any, adapter: Any = None) -> BackboneAdapter:
    """``adapter`` may be None (look it up), a registered name, a class or an instance."""
    if adapter is None:
        return find_adapter(model)
    if isinstance(adapter, str):
        entries = backbone_entries()
        for e in entries:
            if e.name == adapter:
                return _instantiate(e.load(), e.name)
        if adapter == "generic":
            return GenericAdapter()
        names = ", ".join(sorted(e.name for e in entries) + ["generic"])
        raise BackboneError(f"unknown backbone adapter {adapter!r}; installed: {names}")
    if isinstance(adapter, type):
        return _instantiate(adapter, adapter.__name__)
    if hasattr(adapter, "blocks") and hasattr(adapter, "hidden_size"):
        return adapter
    raise CanvasTypeError(
        f"adapter must be None, a registered name, a BackboneAdapter class or instance; got "
        f"{type(adapter).__name__}"
    )
