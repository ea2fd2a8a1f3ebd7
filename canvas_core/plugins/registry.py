"""Registries of named specs (one per kind) and their read-only mapping views.

A :class:`Registry` keeps, per name, the stack of registrations (the last one wins; earlier
ones are only there because a later one passed ``override=True``, and come back when it is
removed).  Registries belong to a :class:`~canvas_core.plugins.host.PluginHost`; every read
first makes the host load its plugins (lazily, once).

The registry also owns the policy for clashes between installed plugins
(:meth:`Registry.add_from_plugin`): the host only reports what it decided.
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple

from canvas_core.errors import DuplicateRegistrationError, UnknownNameError
from canvas_core.plugins.spec import IN_PROCESS, SPEC_FIELDS, Spec, SpecError

if TYPE_CHECKING:  # pragma: no cover
    from canvas_core.plugins.host import PluginHost

__all__ = ["Registry", "RegistryView", "UnknownNameKeyError", "KINDS", "NOUNS", "closest", "BUILTIN_PLUGIN"]

#: plugin name under which the core registers its own types.
BUILTIN_PLUGIN = "builtin"

#: registry kinds, in the order their hooks run.
KINDS: Tuple[str, ...] = ("attention", "kernels", "backbones", "identity", "embedders")
#: human noun of one entry of each kind (error messages).
NOUNS: Dict[str, str] = {
    "attention": "attention type",
    "kernels": "attention kernel",
    "backbones": "backbone adapter",
    "identity": "identity binder",
    "embedders": "embedder",
}


class UnknownNameKeyError(UnknownNameError, KeyError):
    """:class:`UnknownNameError` that is also a ``KeyError`` (mapping-style lookups)."""


def closest(name: str, known) -> Optional[str]:
    """The known name closest to ``name`` (difflib), or None."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.5)
    return close[0] if close else None


class Registry:
    """Named specs of one kind.

    Plugins receive a per-plugin proxy of this object in their hook and call
    :meth:`add`; user code usually goes through the module-level ``register_*`` functions.
    """

    def __init__(self, kind: str, host: Optional["PluginHost"] = None) -> None:
        if kind not in NOUNS:
            raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")
        self.kind = kind
        self.noun = NOUNS[kind]
        self._host = host
        self._stacks: Dict[str, List[Spec]] = {}
        # name -> (error, plugin that tried to register it)
        self._conflicts: Dict[str, Tuple[DuplicateRegistrationError, str]] = {}
        # registrations an installed plugin made with override=True (they win over plain ones)
        self._overriding: "weakref.WeakSet[Spec]" = weakref.WeakSet()

    # ------------------------------------------------------------------ loading
    def _ensure(self) -> None:
        if self._host is not None:
            self._host.ensure_loaded()

    # ------------------------------------------------------------------ writing
    def add(self, name: Any, factory: Any = None, *, override: bool = False, **metadata: Any) -> Spec:
        """Register ``name`` -> ``factory`` in-process (provider ``"<in-process>"``).

        ``name`` may also be a ready :class:`Spec` (then ``factory`` and metadata are not given).
        Returns the stored spec.  Raises :class:`DuplicateRegistrationError` when the name exists
        and ``override`` is false.
        """
        self._ensure()
        spec = self.make_spec(name, factory, metadata)
        return self.insert(spec, override=override)

    def make_spec(self, name: Any, factory: Any, metadata: Dict[str, Any], *,
                  distribution: str = IN_PROCESS, version: str = "", plugin: str = IN_PROCESS,
                  module: Optional[str] = None) -> Spec:
        """Build a :class:`Spec` of this kind from ``add``'s arguments (validates, imports nothing)."""
        if isinstance(name, Spec):
            if factory is not None or metadata:
                raise SpecError(
                    f"registry.add(spec): pass either a Spec or (name, factory, **metadata), not both "
                    f"(spec {name.name!r})")
            spec = name
            spec.kind = self.kind
            if spec.distribution == IN_PROCESS and distribution != IN_PROCESS:
                spec.distribution, spec.version, spec.plugin = distribution, version, plugin
            return spec
        if factory is None:
            from canvas_core.errors import CanvasTypeError

            raise CanvasTypeError(
                f"registry.add({name!r}): a factory is required (a class, a callable or a "
                "'package.module:Object' string)")
        fields = {k: metadata[k] for k in SPEC_FIELDS if k in metadata}
        extra = {k: v for k, v in metadata.items() if k not in SPEC_FIELDS}
        if "metadata" in extra and isinstance(extra["metadata"], dict):
            nested = extra.pop("metadata")
            extra = {**nested, **extra}
        return Spec(name=name, factory=factory, kind=self.kind, distribution=distribution,
                    version=version, plugin=plugin, module=module, metadata=extra, **fields)

    def insert(self, spec: Spec, *, override: bool) -> Spec:
        """Put a ready ``spec`` on top of its name's stack; without ``override`` an existing name
        is a :class:`DuplicateRegistrationError` naming both providers (nothing changes)."""
        if not isinstance(override, bool):
            from canvas_core.errors import CanvasTypeError

            raise CanvasTypeError(f"{self.noun} {spec.name!r}: override must be True or False, got {override!r}")
        stack = self._stacks.get(spec.name)
        if stack and not override:
            old = stack[-1]
            raise DuplicateRegistrationError(
                f"{self.noun} {spec.name!r} is provided twice: by {old.describe_provider()} and by "
                f"{spec.describe_provider()}. Pass override=True to replace the first one on "
                "purpose, or uninstall / block one of the two plugins "
                "(CANVAS_BLOCK_PLUGINS=<plugin or distribution>).")
        self._stacks.setdefault(spec.name, []).append(spec)
        if override:
            self._conflicts.pop(spec.name, None)
        return spec

    def _record_conflict(self, name: str, error: DuplicateRegistrationError, plugin: str) -> None:
        self._conflicts[name] = (error, plugin)

    def _from_builtin(self, name: str) -> bool:
        return any(s.plugin == BUILTIN_PLUGIN for s in self._stacks.get(name, ()))

    def add_from_plugin(self, spec: Spec, *, override: bool = False, strict: bool = False,
                        plugin: Optional[str] = None
                        ) -> Tuple[Optional[Spec], Optional[DuplicateRegistrationError]]:
        """Insert a registration made by a plugin's hook; returns ``(stored spec or None, clash)``.

        The policy for installed plugins (``strict=False``) does not depend on the order in which
        they load:

        * a registration made with ``override=True`` wins over plain ones, whichever came first;
        * two plain registrations of one name, or two overriding ones, are a clash: the name is
          marked ambiguous and using it raises the error (no silent pick);
        * a clash with a builtin keeps the builtin (``override=True`` replaces it).

        With ``strict=True`` (a plugin registered by hand) a clash raises at once.  ``plugin`` is
        the name of the registering plugin (default: ``spec.plugin``).
        """
        plugin = spec.plugin if plugin is None else plugin
        stack = self._stacks.get(spec.name)
        if stack and not strict:
            top = stack[-1]
            top_overrides = (top in self._overriding and top.plugin != plugin
                             and top.plugin not in (BUILTIN_PLUGIN, IN_PROCESS))
            if top_overrides and override:
                clash = DuplicateRegistrationError(
                    f"{self.noun} {spec.name!r} is replaced with override=True by two plugins: "
                    f"{top.describe_provider()} and {spec.describe_provider()}; neither is chosen. "
                    "Uninstall or block one of the two (CANVAS_BLOCK_PLUGINS=<plugin or distribution>).")
                self._record_conflict(spec.name, clash, plugin)
                return None, clash
            if top_overrides and not self._from_builtin(spec.name):
                # the earlier plugin replaces this name on purpose: it stays on top, this one below
                stack.insert(len(stack) - 1, spec)
                return spec, None
        try:
            spec = self.insert(spec, override=override)
        except DuplicateRegistrationError as clash:
            if strict:
                raise
            if not self._from_builtin(spec.name):
                self._record_conflict(spec.name, clash, plugin)
            return None, clash
        if override:
            self._overriding.add(spec)
        return spec, None

    def names_by_plugin(self, plugin: str) -> List[str]:
        """Sorted names ``plugin`` registered here, overridden registrations included."""
        return sorted({s.name for stack in self._stacks.values() for s in stack if s.plugin == plugin})

    def remove(self, name: str) -> Spec:
        """Remove the current registration of ``name`` (an overridden one comes back)."""
        self._ensure()
        stack = self._stacks.get(name)
        if not stack:
            raise self._unknown(name)
        spec = stack.pop()
        if not stack:
            del self._stacks[name]
        self._conflicts.pop(name, None)
        return spec

    def remove_plugin(self, plugin: str) -> List[Spec]:
        """Remove every registration made by ``plugin`` (and conflicts it caused)."""
        removed: List[Spec] = []
        for name in list(self._stacks):
            keep = [s for s in self._stacks[name] if s.plugin != plugin]
            removed.extend(s for s in self._stacks[name] if s.plugin == plugin)
            if keep:
                self._stacks[name] = keep
            else:
                del self._stacks[name]
        for name, (_err, who) in list(self._conflicts.items()):
            if who == plugin or name not in self._stacks or any(s.plugin == plugin for s in removed
                                                                  if s.name == name):
                del self._conflicts[name]
        return removed

    def clear(self) -> None:
        self._stacks.clear()
        self._conflicts.clear()
        self._overriding = weakref.WeakSet()

    # ------------------------------------------------------------------ reading
    def get(self, name: str, default: Any = ...) -> Any:
        """The spec registered as ``name``.

        Raises:
            UnknownNameError: no such name (message: known names, closest match, providing
                distribution when known); a ``KeyError`` too.
            PluginLoadError: the plugin that would have provided it failed to load.
            DuplicateRegistrationError: two plugins provide it (neither chosen silently).
        """
        self._ensure()
        stack = self._stacks.get(name) if isinstance(name, str) else None
        if not stack:
            if default is not ...:
                return default
            raise self._unknown(name)
        if name in self._conflicts:
            raise self._conflicts[name][0]
        return stack[-1]

    __getitem__ = get

    def _unknown(self, name: Any) -> Exception:
        if self._host is not None:
            return self._host.missing_name_error(self.kind, name)
        known = self.names()
        near = closest(str(name), known)
        msg = f"Unknown {self.noun}: {name!r}. Known: {', '.join(known) or '(none)'}."
        if near:
            msg += f" Did you mean {near!r}?"
        return UnknownNameKeyError(msg)

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return isinstance(name, str) and name in self._stacks

    def names(self) -> List[str]:
        """Registered names, sorted."""
        self._ensure()
        return sorted(self._stacks)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._ensure()
        return len(self._stacks)

    def specs(self) -> List[Spec]:
        """Current spec of every name, sorted by name."""
        self._ensure()
        return [self._stacks[n][-1] for n in sorted(self._stacks)]

    def items(self) -> List[Tuple[str, Spec]]:
        return [(s.name, s) for s in self.specs()]

    def all_registrations(self) -> List[Spec]:
        """Every registration, overridden ones included (reports)."""
        self._ensure()
        return [s for n in sorted(self._stacks) for s in self._stacks[n]]

    def conflicts(self) -> Dict[str, str]:
        """name -> message, for names two plugins provide."""
        self._ensure()
        return {n: str(e) for n, (e, _p) in self._conflicts.items()}

    def __repr__(self) -> str:
        return f"<Registry {self.kind}: {', '.join(sorted(self._stacks))}>"


class RegistryView(Mapping):
    """Read-only, live ``name -> Spec`` mapping over one registry of the *default* host.

    Lookups load plugins lazily; an unknown name raises :class:`UnknownNameError` (also a
    ``KeyError``), with the install hint when a distribution is known to provide it.
    """

    def __init__(self, kind: str, getter: Optional[Callable[[str], Registry]] = None) -> None:
        self._kind = kind
        self._getter = getter

    def _reg(self) -> Registry:
        if self._getter is not None:
            return self._getter(self._kind)
        from canvas_core.plugins.host import get_host

        return get_host().registry(self._kind)

    def __getitem__(self, name: str) -> Spec:
        return self._reg().get(name)

    def get(self, name: str, default: Any = None) -> Any:
        reg = self._reg()
        return reg.get(name) if name in reg else default

    def __contains__(self, name: object) -> bool:
        return name in self._reg()

    def __iter__(self) -> Iterator[str]:
        return iter(self._reg().names())

    def __len__(self) -> int:
        return len(self._reg())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._kind!r}: {list(self)})"
