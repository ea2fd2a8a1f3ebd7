"""canvas-core's plugin layer: hooks, the plugin manager, registries, resolution.

Pure Python: importing this package, registering names and listing them never imports torch.

* :mod:`~canvas_core.plugins.hookspecs`: the hooks (``canvas_register_attention(registry)``, ...)
  and the ``hookspec`` / ``hookimpl`` markers.
* :mod:`~canvas_core.plugins.host`: :class:`PluginHost` (loading, in-process registration) and
  the default host; beside it :mod:`~canvas_core.plugins.settings` (environment controls),
  :mod:`~canvas_core.plugins.discovery` (entry points of group ``canvas``, the pluggy manager),
  :mod:`~canvas_core.plugins.hook_runner` (a plugin's hooks against its scoped registry),
  :mod:`~canvas_core.plugins.records` (:class:`PluginRecord`) and
  :mod:`~canvas_core.plugins.diagnostics` (unknown-name errors, ``canvas plugins`` reports).
* :mod:`~canvas_core.plugins.registry`: :class:`Registry` per kind, including the policy for
  clashes between plugins.
* :mod:`~canvas_core.plugins.spec`: :class:`Spec`; :mod:`~canvas_core.plugins.context`:
  :class:`RuntimeContext`.
* :mod:`~canvas_core.plugins.api`: ``register_* / create_* / list_* / unregister_*``.
* :mod:`~canvas_core.plugins.resolve`: :func:`resolve_attention` -> :class:`Resolution`.
* :mod:`~canvas_core.plugins.catalogue`: ``ATTENTION_TYPES``.

See ``docs/plugins.md`` for the plugin author's walk-through.
"""

from __future__ import annotations

from typing import Any, Dict, List

from canvas_core.errors import (
    DuplicateRegistrationError,
    PluginError,
    PluginLoadError,
    UnavailableError,
    UnknownNameError,
)
from canvas_core.plugins.api import (
    ATTENTION_REGISTRY,
    BACKBONE_REGISTRY,
    EMBEDDER_REGISTRY,
    IDENTITY_REGISTRY,
    KERNEL_REGISTRY,
    create_attention,
    create_backbone,
    create_embedder,
    create_identity_binder,
    create_kernel,
    get_attention_spec,
    get_kernel_spec,
    get_registry,
    get_spec,
    list_attention_types,
    list_backbones,
    list_embedders,
    list_identity_binders,
    list_kernels,
    register_attention,
    register_backbone,
    register_embedder,
    register_identity_binder,
    register_kernel,
    unregister_attention,
    unregister_backbone,
    unregister_embedder,
    unregister_identity_binder,
    unregister_kernel,
)
from canvas_core.plugins.catalogue import ATTENTION_TYPES, AttentionTypeInfo
from canvas_core.plugins.hookspecs import ENTRY_POINT_GROUP, HOOK_NAMES, hookimpl, hookspec
from canvas_core.plugins.host import (
    ENV_ALLOW,
    ENV_BLOCK,
    ENV_DISABLE,
    PluginHost,
    PluginRecord,
    get_host,
    get_plugin_manager,
    reset_plugins,
    set_host,
    use_host,
)
from canvas_core.plugins.registry import KINDS, Registry, RegistryView
from canvas_core.plugins.resolve import Resolution, kernel_candidates, resolve_attention
from canvas_core.plugins.spec import IN_PROCESS, RuntimeContext, Spec, SpecError

__all__ = [
    # markers and hooks
    "hookspec", "hookimpl", "HOOK_NAMES", "ENTRY_POINT_GROUP",
    # host
    "PluginHost", "PluginRecord", "get_host", "set_host", "use_host", "reset_plugins",
    "get_plugin_manager", "plugin_report", "registry_report",
    "ENV_DISABLE", "ENV_ALLOW", "ENV_BLOCK",
    # specs and registries
    "Spec", "SpecError", "RuntimeContext", "Registry", "RegistryView", "KINDS", "IN_PROCESS",
    "ATTENTION_REGISTRY", "KERNEL_REGISTRY", "BACKBONE_REGISTRY", "IDENTITY_REGISTRY",
    "EMBEDDER_REGISTRY", "ATTENTION_TYPES", "AttentionTypeInfo",
    "get_registry", "get_spec", "get_attention_spec", "get_kernel_spec",
    # per-kind API
    "register_attention", "create_attention", "list_attention_types", "unregister_attention",
    "register_kernel", "create_kernel", "list_kernels", "unregister_kernel",
    "register_backbone", "create_backbone", "list_backbones", "unregister_backbone",
    "register_identity_binder", "create_identity_binder", "list_identity_binders",
    "unregister_identity_binder",
    "register_embedder", "create_embedder", "list_embedders", "unregister_embedder",
    # resolution
    "resolve_attention", "Resolution", "kernel_candidates",
    # errors (re-exported for convenience)
    "PluginError", "DuplicateRegistrationError", "UnknownNameError", "PluginLoadError",
    "UnavailableError",
]


def plugin_report() -> List[Dict[str, Any]]:
    """One dict per plugin of the default host (builtin, installed, in-process): ``name``,
    ``distribution``, ``version``, ``source``, ``entry_point``, ``status`` (``ok`` / ``failed`` /
    ``blocked`` / ``disabled``), ``error``, ``hooks``, ``registered`` (registry kind -> names),
    ``conflicts``, ``warnings``."""
    return get_host().plugin_report()


def registry_report(ctx: Any = None) -> Dict[str, List[Dict[str, Any]]]:
    """Registry kind -> one dict per registered name with its availability in ``ctx``
    (``available``, ``reasons``)."""
    return get_host().registry_report(ctx)
