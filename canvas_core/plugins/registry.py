"""A :class:`Registry`: the named specs of one kind, and the policy for clashes between plugins.
A plain container that knows no host (loading plugins and the full unknown-name story are the host's)."""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple

from canvas_core.errors import CanvasTypeError, DuplicateRegistrationError, SpecError, UnknownNameKeyError, closest
# the nouns of each kind live with Spec, whose messages use them too
from canvas_core.plugins.spec import API_STEMS, IN_PROCESS, NOUNS, SPEC_FIELDS, Spec

#: plugin name under which the core registers its own types.
BUILTIN_PLUGIN = "builtin"
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


class RegistryState:
    """Everything a registry derives from its log, and the log itself, in one object.  Once a
    registry has published a state (one assignment to ``Registry._state``) nothing in it is
    changed again: a change is made on a copy (or on a fresh state, for a replay) which is then
    published in its turn.  A reader that takes one state (:meth:`Registry.snapshot`) therefore
    sees either the state before a change or the one after it, never one half built, and needs
    no lock (lookups stay lock-free); every read below answers from that one state."""

    __slots__ = ("kind", "log", "stacks", "conflicts_", "shadowed_", "overriding")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.log: Tuple[_Entry, ...] = ()  # the registrations in order, refused ones included
        self.stacks: Dict[str, List[Spec]] = {}
        self.conflicts_: Dict[str, Tuple[DuplicateRegistrationError, str]] = {}
        self.shadowed_: Dict[str, List[Tuple[DuplicateRegistrationError, str]]] = {}
        self.overriding: Set[Spec] = set()  # Spec compares by identity

    def copy_for(self, name: str, entry: _Entry) -> "RegistryState":
        """A private copy to apply ``entry`` (a registration of ``name``) to: the containers, and
        the lists that a registration of ``name`` can change, are new; everything else is shared."""
        new = RegistryState(self.kind)
        new.log = self.log + (entry,)
        new.stacks, new.conflicts_, new.shadowed_ = dict(self.stacks), dict(self.conflicts_), dict(self.shadowed_)
        new.overriding = set(self.overriding)
        if name in new.stacks:
            new.stacks[name] = list(new.stacks[name])
        if name in new.shadowed_:
            new.shadowed_[name] = list(new.shadowed_[name])
        return new

    def names(self) -> List[str]:
        return sorted(self.stacks)

    def specs(self) -> List[Spec]:
        """The current spec of every name, by name."""
        return [self.stacks[n][-1] for n in sorted(self.stacks)]

    def conflicts(self) -> Dict[str, str]:
        """name -> message, for names two plugins provide (using them raises)."""
        return {n: str(e) for n, (e, _p) in self.conflicts_.items()}

    def shadowed(self) -> Dict[str, List[str]]:
        """name -> messages, for builtin names a plugin also registered (refused: builtin kept)."""
        return {n: [str(e) for e, _p in v] for n, v in self.shadowed_.items()}

    def clashes_by_plugin(self) -> Dict[str, List[str]]:
        """plugin -> the messages of its refused registrations whose name still clashes (a name in
        :meth:`conflicts` or :meth:`shadowed`), in registration order.  The state keeps one message
        per name; each refused registration's own message is found by replaying this state's log
        into a scratch registry, exactly as the registry replays it."""
        live = set(self.conflicts_) | set(self.shadowed_)
        out: Dict[str, List[str]] = {}
        if not live:
            return out
        scratch = Registry(self.kind)
        for entry in self.log:
            if not entry.plugin_hook:
                scratch.insert(entry.spec, override=entry.override)
                continue
            _, clash = scratch.add_from_plugin(entry.spec, override=entry.override, strict=entry.strict)
            if clash is not None and entry.spec.name in live:
                out.setdefault(entry.spec.plugin, []).append(str(clash))
        return out


class Registry:
    """Named specs of one kind.  Per name a stack of registrations: the top one is in use, those
    below were replaced with ``override=True`` and come back when it is removed.  Also kept: names
    two plugins fight over (``_conflicts``: name -> (error, plugin)), plugin registrations a
    builtin refused (``_shadowed``: name -> [(error, plugin)]) and the registrations installed
    plugins made with ``override=True`` (``_overriding``: they win over plain ones).

    All of that is derived from the log, the registrations in the order they were made (refused
    ones too).  Adding applies one more entry; removing deletes entries and replays the rest from
    scratch, so a removal leaves exactly the state the remaining registrations make: unregistering
    an override restores what was there before it (a conflict included), and removing a plugin
    gives the state as if it had never been loaded (a registration it had refused comes back).

    The log and the state derived from it live in one :class:`RegistryState` (``_state``) that is
    replaced whole, never changed once visible: writers are serialised by the host's lock, readers
    take no lock.  A reader needing several answers takes :meth:`snapshot` once and asks it."""

    def __init__(self, kind: str) -> None:
        check_kind(kind)
        self.kind, self.noun = kind, NOUNS[kind]
        self._state = RegistryState(kind)

    def _replay(self, log: List[_Entry]) -> None:
        """Derive the state ``log`` makes, applying each entry as it was applied first, in a fresh
        :class:`RegistryState` holding ``log``, then publish it (nothing changes should an entry raise)."""
        st = RegistryState(self.kind)
        st.log = tuple(log)
        for e in log:
            # a strict entry cannot clash here: it was accepted when its name had no registration
            # left or it replaced one with override=True, and dropping entries changes neither
            if e.plugin_hook:
                self._apply_plugin(st, e.spec, override=e.override, strict=e.strict)
            else:
                self._apply_insert(st, e.spec, override=e.override)
        self._state = st

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
        st = self._state.copy_for(spec.name, _Entry(spec, override, False, False))
        self._apply_insert(st, spec, override=override)  # a refusal raises before anything is published
        self._state = st
        return spec

    def _apply_insert(self, st: RegistryState, spec: Spec, *, override: bool) -> None:
        """Apply one direct registration to ``st`` (a state not yet published)."""
        stack = st.stacks.get(spec.name)
        if stack and not override and stack[-1].plugin == spec.plugin and spec.plugin != IN_PROCESS:
            raise DuplicateRegistrationError(
                f"{self.noun} {spec.name!r} is registered twice by the same plugin, "
                f"{spec.describe_provider()} (a hook and an import-time decorator, or two calls): "
                f"neither is chosen. Register it once, or pass override=True to the registration that "
                f"should win.")
        if stack and not override:
            raise DuplicateRegistrationError(
                f"{self.noun} {spec.name!r} is provided twice: by {stack[-1].describe_provider()} and by "
                f"{spec.describe_provider()}. {self._duplicate_fix(stack[-1], spec)}")
        st.stacks.setdefault(spec.name, []).append(spec)
        if override:  # replaced on purpose: hidden while it is on top, back when it is removed (replay)
            st.conflicts_.pop(spec.name, None)

    def _duplicate_fix(self, first: Spec, second: Spec) -> str:
        """How to resolve a plain registration of a name that ``first`` already provides: a name
        registered in this process (``register_*``) is unregistered or overridden in code; only
        two installed plugins are a matter of uninstalling or blocking one."""
        stem = API_STEMS.get(self.kind, self.kind)
        override = f"pass override=True to register_{stem}({second.name!r}, ...) to replace it on purpose"
        if first.plugin == IN_PROCESS:
            return (f"The first registration was made in this process: remove it first with "
                    f"unregister_{stem}({second.name!r}), or {override}.")
        if second.plugin == IN_PROCESS and first.plugin == BUILTIN_PLUGIN:
            return f"The first one is canvas-core's own: register yours under another name, or {override}."
        if second.plugin == IN_PROCESS:
            return (f"The first one comes from an installed plugin: register yours under another name, or "
                    f"{override} (or keep that plugin from loading: {_BLOCK_HINT}).")
        return (f"Pass override=True to replace the first one on purpose, or uninstall / block one of the "
                f"two plugins ({_BLOCK_HINT}).")

    @staticmethod
    def _from_builtin(st: RegistryState, name: str) -> bool:
        return any(s.plugin == BUILTIN_PLUGIN for s in st.stacks.get(name, ()))

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
        st = self._state.copy_for(spec.name, _Entry(spec, override, True, strict))
        result = self._apply_plugin(st, spec, override=override, strict=strict)  # strict clash: raises here
        self._state = st
        return result

    def _apply_plugin(self, st: RegistryState, spec: Spec, *, override: bool, strict: bool
                      ) -> Tuple[Optional[Spec], Optional[DuplicateRegistrationError]]:
        """Apply one plugin hook's registration to ``st`` (a state not yet published)."""
        stack = st.stacks.get(spec.name)
        if stack and not strict:
            top = stack[-1]
            top_overrides = (top in st.overriding and top.plugin != spec.plugin
                             and top.plugin not in (BUILTIN_PLUGIN, IN_PROCESS))
            if top_overrides and override:
                clash = DuplicateRegistrationError(
                    f"{self.noun} {spec.name!r} is replaced with override=True by two plugins: "
                    f"{top.describe_provider()} and {spec.describe_provider()}; neither is chosen. "
                    f"Uninstall or block one of the two ({_BLOCK_HINT}).")
                st.conflicts_[spec.name] = (clash, spec.plugin)
                return None, clash
            if top_overrides and not self._from_builtin(st, spec.name):
                stack.insert(len(stack) - 1, spec)  # the earlier plugin replaces it on purpose
                return spec, None
        try:
            self._apply_insert(st, spec, override=override)
        except DuplicateRegistrationError as clash:
            if strict:
                raise
            if self._from_builtin(st, spec.name):
                st.shadowed_.setdefault(spec.name, []).append((clash, spec.plugin))
            else:
                st.conflicts_[spec.name] = (clash, spec.plugin)
            return None, clash
        if override:
            st.overriding.add(spec)
        return spec, None

    def current(self, name: str) -> Spec:
        """The registration of ``name`` on top of its stack (in use unless two plugins clash over
        it); :class:`UnknownNameError` when there is none."""
        st = self._state
        stack = st.stacks.get(name) if isinstance(name, str) else None
        if not stack:
            raise self._unknown(name, st)
        return stack[-1]

    def remove(self, name: str) -> Spec:
        """Remove the current registration of ``name``: the registry is left as the other
        registrations make it (an overridden one comes back, and a clash it had hidden too)."""
        st = self._state
        stack = st.stacks.get(name) if isinstance(name, str) else None
        if not stack:
            raise self._unknown(name, st)
        spec = stack[-1]
        log = st.log
        at = max(i for i, e in enumerate(log) if e.spec is spec)
        self._replay(log[:at] + log[at + 1:])
        return spec

    def remove_plugin(self, plugin: str) -> None:
        """Remove every registration of ``plugin``, refused ones included: the state is that of
        the other registrations, as if the plugin had never registered anything."""
        log = self._state.log
        kept = [e for e in log if e.spec.plugin != plugin]
        if len(kept) != len(log):
            self._replay(kept)

    def get(self, name: str) -> Spec:
        """The spec registered as ``name``; :class:`UnknownNameError` (also a ``KeyError``) with the
        known names when there is none, :class:`DuplicateRegistrationError` when two plugins
        provide it (neither chosen silently)."""
        st = self._state  # read once: the stacks and the clashes of one and the same state
        stack = st.stacks.get(name) if isinstance(name, str) else None
        if not stack:
            raise self._unknown(name, st)
        if name in st.conflicts_:
            raise st.conflicts_[name][0]
        return stack[-1]

    def _unknown(self, name: Any, st: Optional[RegistryState] = None) -> Exception:
        known = sorted((st or self._state).stacks)
        near = closest(str(name), known)
        return UnknownNameKeyError(f"Unknown {self.noun}: {name!r}. Known: {', '.join(known) or '(none)'}."
                                   + (f" Did you mean {near!r}?" if near else ""))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._state.stacks

    def snapshot(self) -> RegistryState:
        """The state in force now (never changed afterwards): ask it several questions to get
        answers that belong together (names, specs, conflicts, shadowed names, the log)."""
        return self._state

    def names(self) -> List[str]:
        return self._state.names()

    def names_by_plugin(self, plugin: str) -> List[str]:
        """Sorted names ``plugin`` registered here, overridden registrations included."""
        return sorted({s.name for stack in self._state.stacks.values() for s in stack if s.plugin == plugin})

    def __len__(self) -> int:
        return len(self._state.stacks)

    def specs(self) -> List[Spec]:
        """The current spec of every name, by name."""
        return self._state.specs()

    def all_registrations(self) -> List[Spec]:
        """Every registration, overridden ones included (reports)."""
        stacks = self._state.stacks
        return [s for n in sorted(stacks) for s in stacks[n]]

    def conflicts(self) -> Dict[str, str]:
        """name -> message, for names two plugins provide (using them raises)."""
        return self._state.conflicts()

    def shadowed(self) -> Dict[str, List[str]]:
        """name -> messages, for builtin names a plugin also registered (refused: builtin kept)."""
        return self._state.shadowed()

    def clashes_by_plugin(self) -> Dict[str, List[str]]:
        """plugin -> the messages of its refused registrations that clash now, in registration order."""
        return self._state.clashes_by_plugin()

    def __repr__(self) -> str:
        return f"<Registry {self.kind}: {', '.join(sorted(self._state.stacks))}>"
