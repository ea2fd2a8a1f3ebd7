"""The hooks of canvas-core, their markers, and the one rule for finding a plugin's hooks.

**The rule** (as pytest's): a plugin's hook implementations are its functions marked
``@canvas_core.hookimpl`` *and* its unmarked functions named exactly like a hook below.  It is
implemented once, in :meth:`CanvasPluginManager.parse_hookimpl_opts` (pluggy's own extension
point).  A marked function whose name matches no hook fails the plugin; an unmarked function
named ``canvas_register_*`` that matches no hook is reported as a misspelt hook (a warning in
``canvas plugins``, an error under ``canvas plugins --strict``).

Installed distributions announce their plugin with an entry point in group ``canvas``.  Every
hook receives a registry and calls ``registry.add(name, factory, **metadata)`` on it (the
metadata keywords are tabled in docs/plugins.md); ``factory`` is a class, a callable or a lazy
``"package.module:Object"`` string imported only when the name is used.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, List

import pluggy

#: pluggy project name (also the marker attribute prefix: ``canvas_impl`` / ``canvas_spec``).
PROJECT_NAME = "canvas"
#: entry-point group scanned for installed plugins.
ENTRY_POINT_GROUP = "canvas"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def canvas_register_attention(registry) -> None:
    """Register attention *function types* (the ``fn`` of a connection).

    The factory is called as ``factory(d_model=..., n_heads=..., dropout=..., **kwargs)`` and
    returns an ``nn.Module`` called as ``module(queries, keys, values, key_mask=None)``:
    ``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``.  Canvas layers pass ``key_mask`` as a
    bool ``(Nq, Nk)`` tensor (True = may attend) to a type declaring ``key_mask_exact = True``;
    any other type is called once per set of queries sharing their keys (the contract, in one
    place: ``canvas_core.runtime.type_call``; docs/plugins.md).  A query with no allowed key gets
    zeros, never NaN.  Check a type with ``canvas_core.testing.check_attention_type(name)``.
    """


@hookspec
def canvas_register_kernels(registry) -> None:
    """Register attention *kernels*: ``registry.add(name, factory, supports=(types...),
    priority=10, devices=("cuda",), requires=("module",))``.  The factory is called as
    ``factory(group, plan, n_heads=..., head_dim=..., **options)`` and returns an ``nn.Module``
    ``kernel(q, k, v, scale=..., dropout_p=...)`` on ``(B, H, N, d)`` tensors; it computes exactly
    the math of the types it ``supports`` (tried by descending ``priority``)."""


@hookspec
def canvas_register_backbones(registry) -> None:
    """Register backbone *adapters* (grafting onto a pretrained model); ``model_classes=`` names
    the model classes served, matched by class name against the model's MRO."""


@hookspec
def canvas_register_identity(registry) -> None:
    """Register *identity binders*: ``factory(**kwargs)`` returns an ``nn.Module``."""


@hookspec
def canvas_register_embedders(registry) -> None:
    """Register text *embedders*: ``factory(**kwargs)`` returns an object with
    ``embed(texts: list[str]) -> list[list[float]]`` (or a callable doing the same)."""


#: hook name -> registry kind it fills.
HOOK_REGISTRY = {
    "canvas_register_attention": "attention",
    "canvas_register_kernels": "kernels",
    "canvas_register_backbones": "backbones",
    "canvas_register_identity": "identity",
    "canvas_register_embedders": "embedders",
}
#: every hook, in the order registries are filled.
HOOK_NAMES = tuple(HOOK_REGISTRY)
#: the name prefix of every hook; an unmarked function with it that is no hook is a misspelling.
HOOK_PREFIX = "canvas_register_"


class CanvasPluginManager(pluggy.PluginManager):
    """pluggy's manager with the rule of this module: the marker, or a hook's exact name."""

    def parse_hookimpl_opts(self, plugin: Any, name: str):  # type: ignore[override]
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name in HOOK_REGISTRY and inspect.isroutine(getattr(plugin, name, None)):
            opts = {"wrapper": False, "hookwrapper": False, "optionalhook": False,
                    "tryfirst": False, "trylast": False, "specname": None}
        return opts


def new_plugin_manager() -> CanvasPluginManager:
    """A fresh ``PluginManager("canvas")`` that knows the canvas hook specifications."""
    import sys

    pm = CanvasPluginManager(PROJECT_NAME)
    pm.add_hookspecs(sys.modules[__name__])
    return pm


def describe_unknown_hook(name: str) -> str:
    """``'canvas_register_atention' (did you mean 'canvas_register_attention'?)``."""
    near = difflib.get_close_matches(name, HOOK_NAMES, n=1, cutoff=0.5)
    return repr(name) + (f" (did you mean {near[0]!r}?)" if near else "")


def misspelt_hooks(plugin: Any) -> List[str]:
    """Unmarked routines of ``plugin`` named ``canvas_register_*`` that are no hook."""
    names = [n for n in dir(plugin) if n.startswith(HOOK_PREFIX) and n not in HOOK_REGISTRY]
    return sorted(n for n in names if inspect.isroutine(getattr(plugin, n, None))
                  and getattr(getattr(plugin, n), PROJECT_NAME + "_impl", None) is None)
