"""Find the backbone adapter for a model through the plugin registry.

Adapters are registered by plugins with ``registry.add(name, "pkg.module:Adapter",
model_classes=("diffusers.CogVideoXTransformer3DModel",), ...)``. Matching uses class names
only, so looking up an adapter never imports a plugin whose model class is not in the model's MRO.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from canvas_core.errors import BackboneError, CanvasTypeError
from canvas_core.looping.adapter import BackboneAdapter, GenericAdapter, class_matches

__all__ = ["BackboneEntry", "backbone_entries", "find_adapter", "resolve_adapter"]


@dataclass
class BackboneEntry:
    name: str
    factory: Any
    metadata: Dict[str, Any] = field(default_factory=dict)
    provider: str = ""

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
        spec = getattr(self, "spec", None)
        if spec is not None:  # the plugin layer's spec: its PluginLoadError names the plugin
            return spec.load()
        f = self.factory
        if isinstance(f, str):
            mod, _, attr = f.partition(":")
            try:
                obj = importlib.import_module(mod)
                for part in attr.split(".") if attr else []:
                    obj = getattr(obj, part)
            except Exception as e:  # a broken plugin must not look like a missing one
                raise BackboneError(
                    f"backbone adapter {self.name!r} ({f}) failed to load: {type(e).__name__}: {e}"
                ) from e
            return obj
        return f


class _Collector:
    """Registry stand-in used when the plugin layer offers no backbone listing."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.entries: List[BackboneEntry] = []

    def add(self, name: Any, factory: Any = None, **metadata: Any) -> None:
        if factory is None and hasattr(name, "name"):  # a spec object
            spec = name
            self.entries.append(
                BackboneEntry(
                    spec.name,
                    getattr(spec, "factory", None),
                    dict(getattr(spec, "metadata", {}) or {}),
                    self.provider,
                )
            )
            return
        self.entries.append(BackboneEntry(str(name), factory, metadata, self.provider))


def _from_plugin_layer() -> Optional[List[BackboneEntry]]:
    """Specs of the plugin layer's ``backbones`` registry (None if that layer is unavailable)."""
    try:
        plugins = importlib.import_module("canvas_core.plugins")
        registry = plugins.get_registry("backbones")
        specs = registry.specs()
    except (ImportError, AttributeError):
        return None
    out: List[BackboneEntry] = []
    for spec in specs:
        meta = dict(getattr(spec, "metadata", None) or {})
        entry = BackboneEntry(spec.name, spec.factory, meta, str(getattr(spec, "provider", "")))
        entry.spec = spec  # type: ignore[attr-defined]
        out.append(entry)
    return out


def _from_entry_points() -> List[BackboneEntry]:
    from importlib.metadata import entry_points

    out: List[BackboneEntry] = []
    for ep in entry_points(group="canvas"):
        try:
            mod = ep.load()
        except Exception:
            continue
        hook = getattr(mod, "canvas_register_backbones", None)
        if hook is None:
            continue
        col = _Collector(
            getattr(ep.dist, "name", ep.name) if getattr(ep, "dist", None) else ep.name
        )
        try:
            hook(registry=col)
        except Exception:
            continue
        out.extend(col.entries)
    return out


def backbone_entries() -> List[BackboneEntry]:
    """Every registered backbone adapter (name, lazy factory, metadata)."""
    entries = _from_plugin_layer()
    if entries is None:
        entries = _from_entry_points()
    return entries


def find_adapter(model: Any) -> BackboneAdapter:
    """The registered adapter matching ``model``'s class, else the generic adapter when the model
    has a ``transformer_blocks`` / ``blocks`` list, else :class:`BackboneError`."""
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
    names = ", ".join(sorted(e.name for e in entries)) or "none"
    raise BackboneError(
        f"no backbone adapter for {type(model).__module__}.{type(model).__qualname__} "
        f"(installed adapters: {names}). Install the plugin for this model family (e.g. "
        "`pip install canvas-plugin-cogvideox`), pass adapter=... to graft_looped_blocks, or "
        "expose the blocks as `transformer_blocks` / `blocks` (nn.ModuleList)"
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
