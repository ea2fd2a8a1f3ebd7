"""The hook specifications of canvas-core: the one place a plugin author reads.

A plugin is any importable object (usually a module) whose functions carry the
``@canvas_core.hookimpl`` marker and are named like one of the hooks below.  Installed
distributions announce their plugin with an entry point in group ``canvas``::

    [project.entry-points.canvas]
    myplugin = "my_canvas_plugin"          # a module (or "pkg.mod:object")

Every hook receives a *registry* and calls ``registry.add(name, factory, **metadata)`` on it;
hooks return nothing.  ``factory`` is a class / callable, or (preferred) a lazy
``"package.module:Object"`` string that is imported only when the name is used, so registering
never imports torch, diffusers, timm or mamba-ssm.

Metadata understood by every registry (all optional):

``family``, ``complexity``, ``description``
    catalogue text (shown by ``canvas plugins`` and ``ATTENTION_TYPES``).
``requires=("mamba_ssm",)``
    importable top-level modules the factory needs; checked with
    ``importlib.util.find_spec`` (nothing is imported).
``devices=("cuda",)``
    device types the implementation runs on (``None``: any).
``dtypes=("float16", "bfloat16")``
    dtypes it supports (``None``: any).
``check=callable(ctx) -> list[str]``
    extra reasons it cannot run in a :class:`~canvas_core.plugins.RuntimeContext`.
``priority=int``
    kernels: higher is tried first (the builtin ``reference`` kernel has 0).
``supports=("cross_attention", ...)``
    kernels: the attention types the kernel executes.
``differentiable=False``
    the implementation has no backward (rejected when ``ctx.requires_grad``).
``override=True``
    replace an existing registration of the same name instead of raising
    :class:`~canvas_core.errors.DuplicateRegistrationError`.

Any other keyword is kept in ``spec.metadata`` (e.g. ``model_classes=`` for backbones).
"""

from __future__ import annotations

import pluggy

__all__ = [
    "PROJECT_NAME",
    "ENTRY_POINT_GROUP",
    "hookspec",
    "hookimpl",
    "HOOK_NAMES",
    "HOOK_REGISTRY",
    "canvas_register_attention",
    "canvas_register_kernels",
    "canvas_register_backbones",
    "canvas_register_identity",
    "canvas_register_embedders",
]

#: pluggy project name (also the marker attribute prefix: ``canvas_impl`` / ``canvas_spec``).
PROJECT_NAME = "canvas"
#: entry-point group scanned for installed plugins.
ENTRY_POINT_GROUP = "canvas"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def canvas_register_attention(registry) -> None:
    """Register attention *function types* (the ``fn`` of a connection).

    ``registry.add(name, factory, **metadata)``; the factory is called as
    ``factory(d_model=..., n_heads=..., dropout=..., **kwargs)`` and returns an ``nn.Module``
    called as ``module(queries, keys, values, key_mask=None)`` with shapes
    ``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``.  Canvas layers pass ``key_mask`` as a
    bool ``(Nq, Nk)`` tensor (True = may attend); a ``forward`` without ``key_mask`` is called
    once per set of queries sharing their keys instead (the contract, in one place:
    ``canvas_core.runtime.type_call``; docs/plugins.md).  A query with no allowed key, or an
    empty key set (``Nk == 0``), gets zeros, never NaN.  Check your type with
    ``canvas_core.testing.check_attention_type(name)``.
    """


@hookspec
def canvas_register_kernels(registry) -> None:
    """Register attention *kernels* (backends executing one or more attention types faster).

    ``registry.add(name, factory, supports=("cross_attention", ...), priority=10,
    devices=("cuda",), requires=("some_module",))``.  The factory is called as
    ``factory(group, plan, n_heads=..., head_dim=..., **options)`` and returns an ``nn.Module``
    ``kernel(q, k, v, scale=..., dropout_p=...)`` on ``(B, H, N, d)`` tensors in canonical order
    (see :mod:`canvas_core.runtime.kernels`).  A kernel must compute exactly the math of the
    types it ``supports``; the resolver tries kernels by descending ``priority`` and keeps the
    first one that can run here.
    """


@hookspec
def canvas_register_backbones(registry) -> None:
    """Register backbone *adapters* (how to graft canvas attention onto a pretrained model).

    ``registry.add(name, "pkg.mod:Adapter", model_classes=("diffusers.SomeModel",), ...)``;
    ``model_classes`` are matched by class name against the model's MRO, so looking up an
    adapter never imports a plugin whose model class is not in use.
    """


@hookspec
def canvas_register_identity(registry) -> None:
    """Register *identity binders* (slot / entity binding modules for ``IdentitySpec``).

    ``registry.add(name, factory, **metadata)``; the factory is called with the binder's keyword
    arguments and returns an ``nn.Module``.
    """


@hookspec
def canvas_register_embedders(registry) -> None:
    """Register text *embedders* (used to fill regions' ``semantic_embedding``).

    ``registry.add(name, factory, **metadata)``; the factory is called with the embedder's
    keyword arguments and returns an object with ``embed(texts: list[str]) -> list[list[float]]``
    (or a callable doing the same).
    """


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
