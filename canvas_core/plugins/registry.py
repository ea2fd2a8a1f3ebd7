"""A :class:`Registry`: the named specs of one kind, and the policy for clashes between plugins.
A plain container that knows no host (loading plugins and the full unknown-name story are the host's)."""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple

from canvas_core.errors import CanvasTypeError, DuplicateRegistrationError, SpecError, UnknownNameKeyError, closest
from canvas_core.plugins.spec import IN_PROCESS, SPEC_FIELDS, Spec

#: plugin name under which the core registers its own types.
BUILTIN_PLUGIN = "builtin"
#: registry kind -> human noun of one entry (error messages), in the order their hooks run.
NOUNS: Dict[str, str] = {"attention": "attention type", "kernels": "attention kernel",
                         "backbones": "backbone adapter", "identity": "identity binder", "embedders": "embedder"}
KINDS: Tuple[str, ...] = tuple(NOUNS)
_BLOCK_HINT = "CANVAS_BLOCK_PLUGINS=<plugin or distribution>"


def check_kind(kind: str) -> None:
    """Raise :class:`SpecError` naming ``kind`` and the valid kinds unless ``kind`` is a registry kind."""
    if kind not in NOUNS:
        raise SpecError(f"unknown registry kind {kind!r}; expected one of {', '.join(KINDS)}")


class _Entry(NamedTuple):
    """One accepted call that changed a registry: a plugin hook's ``add_from_plugin`` (``plugin_hook``;
    refused clashes included, they are part of the state) or a direct :meth:`Registry.insert`."""

    spec: Spec
    override: bool
    plugin_hook: bool
    strict: bool


class Registry:
    """Named specs of one kind.  Per name a stack of registrations: the top one is in use, those
    below were replaced with ``override=True`` and come back when it is removed.  Also kept: names
    two plugins fight over (``_conflicts``: name -> (error, plugin)), plugin registrations a
    builtin refused (``_shadowed``: name -> [(error, plugin)]) and the registrations installed
    plugins made with ``override=True`` (``_overriding``: they win over plain ones).

    All of that is derived from ``_log``, the registrations in the order they were made (refused
    ones too).  Adding applies one more entry; removing deletes entries and replays the rest from
    scratch, so a removal leaves exactly the state the remaining registrations make: unregistering
    an override restores what was there before it (a conflict included), and removing a plugin
    gives the state as if it had never been loaded (a registration it had refused comes back)."""

    def __init__(self, kind: str) -> None:
        check_kind(kind)
        self.kind, self.noun = kind, NOUNS[kind]
        self._log: List[_Entry] = []
        self._clear()

    def _clear(self) -> None:
        self._stacks: Dict[str, List[Spec]] = {}
        self._conflicts: Dict[str, Tuple[DuplicateRegistrationError, str]] = {}
        self._shadowed: Dict[str, List[Tuple[DuplicateRegistrationError, str]]] = {}
        self._overriding: Set[Spec] = set()  # Spec compares by identity

    def _replay(self) -> None:
        """Rebuild the derived state from ``_log``, applying each entry as it was applied first."""
        self._clear()
        for e in self._log:
            # a strict entry cannot clash here: it was accepted when its name had no registration
            # left or it replaced one with override=True, and dropping entries changes neither
            if e.plugin_hook:
                self._apply_plugin(e.spec, override=e.override, strict=e.strict)
            else:
                self._apply_insert(e.spec, override=e.override)

    def make_spec(self, name: str, factory: Any, metadata: Dict[str, Any], *,
                  distribution: str = IN_PROCESS, version: str = "", plugin: str = IN_PROCESS,
                  module: Optional[str] = None) -> Spec:
        if factory is None:
            raise CanvasTypeError(
                f"registry.add({name!r}): a factory is required (a class, a callable or a "
                "'package.module:Object' string)")
        fields = {k: metadata[k] for k in SPEC_FIELDS if k in metadata}
        extra = {k: v for k, v in metadata.items() if k not in SPEC_FIELDS}
        return Spec(name=name, factory=factory, kind=self.kind, distribution=distribution,
                    version=version, plugin=plugin, module=module, metadata=extra, **fields)

    def insert(self, spec: Spec, *, override: bool) -> Spec:
        """Put ``spec`` on top of its name's stack; an existing name needs ``override``."""
        if not isinstance(override, bool):
            raise CanvasTypeError(f"{self.noun} {spec.name!r}: override must be True or False, got {override!r}")
        self._apply_insert(spec, override=override)
        self._log.append(_Entry(spec, override, False, False))
        return spec

    def _apply_insert(self, spec: Spec, *, override: bool) -> None:
        stack = self._stacks.get(spec.name)
        if stack and not override:
            raise DuplicateRegistrationError(
                f"{self.noun} {spec.name!r} is provided twice: by {stack[-1].describe_provider()} and by "
                f"{spec.describe_provider()}. Pass override=True to replace the first one on "
                f"purpose, or uninstall / block one of the two plugins ({_BLOCK_HINT}).")
        self._stacks.setdefault(spec.name, []).append(spec)
        if override:  # replaced on purpose: hidden while it is on top, back when it is removed (replay)
            self._conflicts.pop(spec.name, None)

    def _from_builtin(self, name: str) -> bool:
        return any(s.plugin == BUILTIN_PLUGIN for s in self._stacks.get(name, ()))

    def add_from_plugin(self, spec: Spec, *, override: bool = False, strict: bool = False
                        ) -> Tuple[Optional[Spec], Optional[DuplicateRegistrationError]]:
        """Insert a plugin hook's registration; returns ``(stored spec or None, clash)``.  The policy
        does not depend on load order: ``override=True`` wins over plain registrations; two plain (or
        two overriding) ones make the name ambiguous (using it raises); a builtin is kept and the
        refusal recorded in :meth:`shadowed` (only ``override=True`` replaces it).  ``strict``: a
        clash raises (and nothing is recorded).  A refused registration is remembered: should the
        registration it clashed with be removed, it takes part again."""
        if not isinstance(override, bool):
            raise CanvasTypeError(f"{self.noun} {spec.name!r}: override must be True or False, got {override!r}")
        result = self._apply_plugin(spec, override=override, strict=strict)
        self._log.append(_Entry(spec, override, True, strict))
        return result

    def _apply_plugin(self, spec: Spec, *, override: bool, strict: bool
                      ) -> Tuple[Optional[Spec], Optional[DuplicateRegistrationError]]:
        stack = self._stacks.get(spec.name)
        if stack and not strict:
            top = stack[-1]
            top_overrides = (top in self._overriding and top.plugin != spec.plugin
                             and top.plugin not in (BUILTIN_PLUGIN, IN_PROCESS))
            if top_overrides and override:
                clash = DuplicateRegistrationError(
                    f"{self.noun} {spec.name!r} is replaced with override=True by two plugins: "
                    f"{top.describe_provider()} and {spec.describe_provider()}; neither is chosen. "
                    f"Uninstall or block one of the two ({_BLOCK_HINT}).")
                self._conflicts[spec.name] = (clash, spec.plugin)
                return None, clash
            if top_overrides and not self._from_builtin(spec.name):
                stack.insert(len(stack) - 1, spec)  # the earlier plugin replaces it on purpose
                return spec, None
        try:
            self._apply_insert(spec, override=override)
        except DuplicateRegistrationError as clash:
            if strict:
                raise
            if self._from_builtin(spec.name):
                self._shadowed.setdefault(spec.name, []).append((clash, spec.plugin))
            else:
                self._conflicts[spec.name] = (clash, spec.plugin)
            return None, clash
        if override:
            self._overriding.add(spec)
        return spec, None

    def current(self, name: str) -> Spec:
        """The registration of ``name`` on top of its stack (in use unless two plugins clash over
        it); :class:`UnknownNameError` when there is none."""
        stack = self._stacks.get(name) if isinstance(name, str) else None
        if not stack:
            raise self._unknown(name)
        return stack[-1]

    def remove(self, name: str) -> Spec:
        """Remove the current registration of ``name``: the registry is left as the other
        registrations make it (an overridden one comes back, and a clash it had hidden too)."""
        stack = self._stacks.get(name) if isinstance(name, str) else None
        if not stack:
            raise self._unknown(name)
        spec = stack[-1]
        at = max(i for i, e in enumerate(self._log) if e.spec is spec)
        del self._log[at]
        self._replay()
        return spec

    def remove_plugin(self, plugin: str) -> None:
        """Remove every registration of ``plugin``, refused ones included: the state is that of
        the other registrations, as if the plugin had never registered anything."""
        kept = [e for e in self._log if e.spec.plugin != plugin]
        if len(kept) != len(self._log):
            self._log = kept
            self._replay()

    def get(self, name: str) -> Spec:
        """The spec registered as ``name``; :class:`UnknownNameError` (also a ``KeyError``) with the
        known names when there is none, :class:`DuplicateRegistrationError` when two plugins
        provide it (neither chosen silently)."""
        stack = self._stacks.get(name) if isinstance(name, str) else None
        if not stack:
            raise self._unknown(name)
        if name in self._conflicts:
            raise self._conflicts[name][0]
        return stack[-1]

    def _unknown(self, name: Any) -> Exception:
        known = self.names()
        near = closest(str(name), known)
        return UnknownNameKeyError(f"Unknown {self.noun}: {name!r}. Known: {', '.join(known) or '(none)'}."
                                   + (f" Did you mean {near!r}?" if near else ""))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._stacks

    def names(self) -> List[str]:
        return sorted(self._stacks)

    def names_by_plugin(self, plugin: str) -> List[str]:
        """Sorted names ``plugin`` registered here, overridden registrations included."""
        return sorted({s.name for stack in self._stacks.values() for s in stack if s.plugin == plugin})

    def __len__(self) -> int:
        return len(self._stacks)

    def specs(self) -> List[Spec]:
        """The current spec of every name, by name."""
        return [self._stacks[n][-1] for n in sorted(self._stacks)]

    def all_registrations(self) -> List[Spec]:
        """Every registration, overridden ones included (reports)."""
        return [s for n in sorted(self._stacks) for s in self._stacks[n]]

    def conflicts(self) -> Dict[str, str]:
        """name -> message, for names two plugins provide (using them raises)."""
        return {n: str(e) for n, (e, _p) in self._conflicts.items()}

    def shadowed(self) -> Dict[str, List[str]]:
        """name -> messages, for builtin names a plugin also registered (refused: builtin kept)."""
        return {n: [str(e) for e, _p in v] for n, v in self._shadowed.items()}

    def __repr__(self) -> str:
        return f"<Registry {self.kind}: {', '.join(sorted(self._stacks))}>"
