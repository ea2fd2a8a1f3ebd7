"""The hooks of canvas-core, their markers, and the one rule for finding a plugin's hooks.

**The rule** (as pytest's): a plugin's hooks are its functions marked ``@canvas_core.hookimpl``
and its unmarked functions named exactly like a hook below, implemented once, in
:meth:`CanvasPluginManager.parse_hookimpl_opts`.  A marked function that matches no hook fails the
plugin; an unmarked ``canvas_register_*`` that matches none is a misspelt hook (a warning in
``canvas plugins``, an error under ``--strict``).  Each hook calls ``registry.add(name, factory,
**metadata)`` (docs/plugins.md); a factory is a class, a callable or a lazy
``"package.module:Object"`` string.  Installed distributions use entry-point group ``canvas``.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, List

import pluggy

from canvas_core.errors import closest
from canvas_core.plugins.registry import KINDS

PROJECT_NAME = "canvas"  # pluggy project (marker attributes ``canvas_impl`` / ``canvas_spec``)
ENTRY_POINT_GROUP = "canvas"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def canvas_register_attention(registry) -> None:
    """Register attention *function types* (the ``fn`` of a connection): ``factory(d_model=,
    n_heads=, dropout=, **kwargs)`` returns an ``nn.Module`` ``module(queries, keys, values,
    key_mask=None)``, ``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``; a query with no allowed
    key gets zeros.  The ``key_mask`` contract is ``canvas_core.runtime.type_call``'s
    (docs/plugins.md); ``canvas_core.testing.check_attention_type(name)`` checks a type."""


@hookspec
def canvas_register_kernels(registry) -> None:
    """Register attention *kernels* (``supports=(types...)``, ``priority=``): ``factory(group, plan,
    n_heads=, head_dim=, **options)`` returns an ``nn.Module`` ``kernel(q, k, v, scale=,
    dropout_p=)`` on ``(B, H, N, d)`` computing exactly the math of the types it supports."""


@hookspec
def canvas_register_backbones(registry) -> None:
    """Register backbone *adapters*; ``model_classes=`` names the model classes served (MRO)."""


@hookspec
def canvas_register_identity(registry) -> None:
    """Register *identity binders*: ``factory(**kwargs)`` returns an ``nn.Module``."""


@hookspec
def canvas_register_embedders(registry) -> None:
    """Register text *embedders*: ``factory(**kwargs)`` has ``embed(texts) -> list[list[float]]``."""


HOOK_PREFIX = "canvas_register_"
#: hook name -> the registry kind it fills, in the order registries are filled.
HOOK_REGISTRY = {HOOK_PREFIX + k: k for k in KINDS}
HOOK_NAMES = tuple(HOOK_REGISTRY)


class CanvasPluginManager(pluggy.PluginManager):
    """pluggy's manager of the hooks above, with the rule of this module: the marker, or a hook's exact name."""

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self.add_hookspecs(sys.modules[__name__])

    def parse_hookimpl_opts(self, plugin: Any, name: str):  # type: ignore[override]
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name in HOOK_REGISTRY and inspect.isroutine(getattr(plugin, name, None)):
            opts = dict(getattr(hookimpl(lambda: None), PROJECT_NAME + "_impl"))  # a plain marker's options
        return opts


def describe_unknown_hook(name: str) -> str:
    """``'canvas_register_atention' (did you mean 'canvas_register_attention'?)``."""
    near = closest(name, HOOK_NAMES)
    return repr(name) + (f" (did you mean {near!r}?)" if near else "")


def misspelt_hooks(plugin: Any) -> List[str]:
    """Unmarked routines of ``plugin`` named ``canvas_register_*`` that are no hook."""
    names = [n for n in dir(plugin) if n.startswith(HOOK_PREFIX) and n not in HOOK_REGISTRY]
    return sorted(n for n in names if inspect.isroutine(getattr(plugin, n, None))
                  and getattr(getattr(plugin, n), PROJECT_NAME + "_impl", None) is None)
