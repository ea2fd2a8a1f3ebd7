"""canvas-core's plugin layer: hooks (``hookspecs``), the host that loads plugins (``host``,
``loading``), registries and their entries (``registry``, ``spec``), the public
functions (``api``) and resolution (``resolve``).  Pure Python: importing, registering and listing
never import torch.  ``docs/plugins.md`` is the plugin author's walk-through.
"""

from __future__ import annotations

from typing import Any, Dict, List

from canvas_core.errors import (
    DuplicateRegistrationError, PluginError, PluginLoadError, UnavailableError, UnknownNameError,
)
from canvas_core.plugins import api
from canvas_core.plugins.api import (
    ATTENTION_TYPES, AttentionTypeInfo, RegistryView, get_attention_spec, get_kernel_spec, get_registry, get_spec,
)
from canvas_core.plugins.hookspecs import ENTRY_POINT_GROUP, HOOK_NAMES, hookimpl, hookspec
from canvas_core.plugins.host import PluginHost, get_host, get_plugin_manager, reset_plugins, set_host, use_host
from canvas_core.plugins.loading import ENV_ALLOW, ENV_BLOCK, ENV_DISABLE, PluginRecord
from canvas_core.plugins.registry import KINDS, Registry
from canvas_core.plugins.resolve import ResolvedGroup, kernel_candidates, resolve_attention
from canvas_core.plugins.spec import IN_PROCESS, RuntimeContext, Spec, SpecError

_PER_KIND = [n for n in api.__all__ if n.startswith(("register_", "unregister_", "list_", "create_"))
             or n.endswith("_REGISTRY")]
globals().update({n: getattr(api, n) for n in _PER_KIND})

__all__ = [
    "hookspec", "hookimpl", "HOOK_NAMES", "ENTRY_POINT_GROUP",
    "PluginHost", "PluginRecord", "get_host", "set_host", "use_host", "reset_plugins",
    "get_plugin_manager", "plugin_report", "registry_report", "ENV_DISABLE", "ENV_ALLOW", "ENV_BLOCK",
    "Spec", "SpecError", "RuntimeContext", "Registry", "RegistryView", "KINDS", "IN_PROCESS",
    "ATTENTION_TYPES", "AttentionTypeInfo", "get_registry", "get_spec", "get_attention_spec", "get_kernel_spec",
    *_PER_KIND,
    "resolve_attention", "ResolvedGroup", "kernel_candidates",
    "PluginError", "DuplicateRegistrationError", "UnknownNameError", "PluginLoadError", "UnavailableError",
]


def plugin_report() -> List[Dict[str, Any]]:
    """One ``PluginRecord.to_dict`` per plugin of the default host (``canvas plugins --json``)."""
    return get_host().plugin_report()


def registry_report(ctx: Any = None) -> Dict[str, List[Dict[str, Any]]]:
    """Registry kind -> one dict per registered name with its availability in ``ctx``."""
    return get_host().registry_report(ctx)
