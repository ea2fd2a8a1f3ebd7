"""Removing a registration restores exactly the state the remaining registrations make.

Audit: two installed plugins registering one name make it ambiguous (using it raises); an
in-process ``register_attention(name, ..., override=True)`` followed by ``unregister_attention``
left the name resolving silently to one of the two plugins, because the override had thrown the
clash away.  The same loss hit ``registered_plugin`` over a conflicted name and
``unregister_plugin`` of one side of a clash (the name then vanished instead of going to the other
plugin, as blocking the first one with ``CANVAS_BLOCK_PLUGINS`` gives).
"""

from __future__ import annotations

import types
import warnings

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import canvas_core.plugins as P
from canvas_core import hookimpl
from canvas_core.errors import DuplicateRegistrationError, PluginError
from canvas_core.plugins import PluginHost, use_host
from canvas_core.plugins.registry import BUILTIN_PLUGIN, Registry
from canvas_core.plugins.spec import IN_PROCESS, Spec
from canvas_core.testing import isolated_plugins, registered_plugin

PLAIN = '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("{name}", dict)
'''


class Mine:
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        self.d_model = d_model


def _outcome(host_or_reg, name):
    reg = host_or_reg.registry("attention") if isinstance(host_or_reg, PluginHost) else host_or_reg
    try:
        return reg.get(name)
    except DuplicateRegistrationError as exc:
        return ("conflict", str(exc))
    except KeyError:
        return ("unknown",)


@pytest.fixture
def clashing(site):
    """Two installed plugins that both register one name; returns (host, name, ep names)."""
    name = site.unique("clash_name")
    eps = [site.unique("side_a"), site.unique("side_b")]
    for ep in eps:
        site.plugin(f"canvas-plugin-{ep.replace('_', '-')}", ep, PLAIN.format(name=name))
    host = PluginHost(allow=eps)
    with warnings.catch_warnings(), use_host(host):
        warnings.simplefilter("ignore")
        with pytest.raises(DuplicateRegistrationError, match="provided twice"):
            P.get_attention_spec(name)
        yield host, name, eps


def test_unregistering_an_override_brings_the_conflict_back(clashing):
    host, name, _ = clashing
    mine = P.register_attention(name, Mine, override=True)
    assert P.get_attention_spec(name) is mine  # an explicit override resolves it while it lasts
    assert P.unregister_attention(name) is mine
    with pytest.raises(DuplicateRegistrationError, match="provided twice"):  # neither picked silently
        P.get_attention_spec(name)
    assert name in host.registry("attention").conflicts()


def test_a_registered_plugin_overriding_a_conflict_leaves_it_as_it_was(clashing):
    host, name, _ = clashing
    plugin = types.SimpleNamespace(canvas_register_attention=hookimpl(
        lambda registry: registry.add(name, Mine, override=True)))
    with registered_plugin(plugin, name="restore-state-override"):
        assert P.get_attention_spec(name).plugin == "restore-state-override"
    with pytest.raises(DuplicateRegistrationError):
        P.get_attention_spec(name)
    with isolated_plugins(autoload=False):  # another host: nothing of the clash there
        assert name not in P.list_attention_types()
    with pytest.raises(DuplicateRegistrationError):
        P.get_attention_spec(name)


@pytest.mark.parametrize("side", [0, 1])
def test_unregistering_one_side_of_a_clash_equals_blocking_it(clashing, side):
    host, name, eps = clashing
    host.unregister_plugin(eps[side])
    left = P.get_attention_spec(name)  # the other plugin provides it now, as when the first is blocked
    assert left.plugin == eps[1 - side]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blocked = PluginHost(allow=eps, block=[eps[side]])
        assert blocked.registry("attention").get(name).plugin == eps[1 - side]
    assert name not in host.registry("attention").conflicts()


def test_a_refused_unregister_of_a_conflicted_name_changes_nothing(clashing):
    host, name, _ = clashing
    before = _outcome(host, name)
    with pytest.raises(PluginError, match="cannot unregister"):
        P.unregister_attention(name)
    assert _outcome(host, name) == before


# ------------------------------------------------------------------ the registry as a state machine
NAMES = ("x", "y")
PLUGINS = ("a", "b", "c", BUILTIN_PLUGIN)


def _spec(name, plugin):
    return Spec(name=name, factory=dict, kind="attention", distribution=f"dist-{plugin}", plugin=plugin)


def snapshot(reg):
    """Everything a user can observe: each name's stack and lookup, the conflicts, the refusals."""
    names = sorted(set(NAMES) | set(reg.names()))
    return ([(n, [id(s) for s in reg.all_registrations() if s.name == n], _outcome(reg, n)) for n in names],
            reg.conflicts(), reg.shadowed())


class RegistryMachine(RuleBasedStateMachine):
    """Random registrations and removals, against a model: the state is always the one the
    registrations still in force give when made in order on a fresh registry."""

    def __init__(self):
        super().__init__()
        self.reg = Registry("attention")
        self.history = []  # (spec, override, from a plugin hook)

    def replayed(self):
        fresh = Registry("attention")
        for spec, override, hook in self.history:
            if hook:
                fresh.add_from_plugin(spec, override=override)
            else:
                fresh.insert(spec, override=override)
        return fresh

    @rule(name=st.sampled_from(NAMES), plugin=st.sampled_from(PLUGINS), override=st.booleans())
    def plugin_registers(self, name, plugin, override):
        spec = _spec(name, plugin)
        self.reg.add_from_plugin(spec, override=override)
        self.history.append((spec, override, True))

    @rule(name=st.sampled_from(NAMES), override=st.booleans())
    def in_process_registers(self, name, override):
        spec, before = _spec(name, IN_PROCESS), snapshot(self.reg)
        try:
            self.reg.insert(spec, override=override)
        except DuplicateRegistrationError:
            assert snapshot(self.reg) == before  # refused: nothing changed
        else:
            self.history.append((spec, override, False))

    @rule(name=st.sampled_from(NAMES))
    def override_then_unregister_restores(self, name):
        before = snapshot(self.reg)
        spec = self.reg.insert(_spec(name, IN_PROCESS), override=True)
        assert self.reg.get(name) is spec
        assert self.reg.remove(name) is spec
        assert snapshot(self.reg) == before

    @rule(name=st.sampled_from(NAMES), override=st.booleans())
    def plugin_added_then_removed_restores(self, name, override):
        before = snapshot(self.reg)
        self.reg.add_from_plugin(_spec(name, "temporary"), override=override)
        self.reg.remove_plugin("temporary")
        assert snapshot(self.reg) == before

    @rule(name=st.sampled_from(NAMES))
    def unregister_in_process_top(self, name):
        if name not in self.reg or self.reg.current(name).plugin != IN_PROCESS:
            return  # the host refuses it (only in-process registrations are unregistered)
        top = self.reg.current(name)
        assert self.reg.remove(name) is top
        at = max(i for i, (s, _o, _h) in enumerate(self.history) if s is top)
        del self.history[at]

    @rule(plugin=st.sampled_from(PLUGINS + (IN_PROCESS,)))
    def remove_plugin(self, plugin):
        self.reg.remove_plugin(plugin)
        self.history = [h for h in self.history if h[0].plugin != plugin]

    @invariant()
    def state_is_that_of_the_registrations_in_force(self):
        assert snapshot(self.reg) == snapshot(self.replayed())

    @invariant()
    def a_conflicted_name_is_never_resolved_silently(self):
        for name in self.reg.conflicts():
            assert isinstance(_outcome(self.reg, name), tuple)


RegistryMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=25, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])
TestRegistryMachine = RegistryMachine.TestCase
