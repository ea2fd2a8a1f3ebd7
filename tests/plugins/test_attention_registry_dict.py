"""``ATTENTION_REGISTRY`` / ``ATTENTION_TYPES`` used the way canvas-engineering's dicts are: a value
is called and inspected like the class it names, ``ATTENTION_REGISTRY[name] = cls`` registers,
``del`` unregisters, ``ATTENTION_TYPES[name] = "text"`` describes a registered type.  canvas-core's
own API of the views (Spec attributes, live, read-only for other kinds) is unchanged."""

from __future__ import annotations

import inspect
import pickle
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import canvas_core  # noqa: E402
import canvas_core.plugins as P  # noqa: E402
from canvas_core.errors import (  # noqa: E402
    CanvasTypeError,
    DuplicateRegistrationError,
    PluginError,
    SpecError,
    UnknownNameError,
)


class ThreeArgs(nn.Module):
    """A type written for canvas-engineering: built as cls(d_model, n_heads, dropout)."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values):
        return self.proj(queries)


class OnlyWidth(nn.Module):
    def __init__(self, d_model):
        super().__init__()


def test_a_value_is_used_like_the_class(host):
    entry = P.ATTENTION_REGISTRY["cross_attention"]
    module = entry(16, 4, 0.0)  # canvas-engineering: ATTENTION_REGISTRY[fn](d_model, n_heads, dropout)
    assert type(module).__name__ == "CrossAttention" and module(torch.randn(1, 3, 16), torch.randn(1, 5, 16),
                                                                torch.randn(1, 5, 16)).shape == (1, 3, 16)
    assert entry.__name__ == "CrossAttention" and entry.__qualname__ == "CrossAttention"
    assert issubclass(entry, nn.Module) and isinstance(module, entry) and not isinstance(nn.Linear(2, 2), entry)
    assert issubclass(type(module), entry)
    assert list(inspect.signature(entry).parameters)[:3] == ["d_model", "n_heads", "dropout"]

    class Wider(P.ATTENTION_REGISTRY["cross_attention"]):  # subclassing the registry's value
        pass

    assert issubclass(Wider, nn.Module) and Wider.__mro__[1] is entry.load()
    assert P.ATTENTION_REGISTRY["linear_attention"].__name__ == "LinearAttention"


def test_a_value_is_still_the_spec(host):
    entry = P.ATTENTION_REGISTRY["cross_attention"]
    spec = P.get_attention_spec("cross_attention")
    assert entry.spec is spec and entry == spec and spec == entry and hash(entry) == hash(spec)
    assert entry.name == "cross_attention" and entry.factory == spec.factory and entry.family == spec.family
    assert repr(entry) == repr(spec) and "unsupported_reasons" in dir(entry)
    assert pickle.loads(pickle.dumps(entry)).name == "cross_attention"
    assert P.ATTENTION_REGISTRY.get("cross_attention") == spec and P.ATTENTION_REGISTRY.get("nope") is None


def test_assignment_registers_in_process(host):
    P.ATTENTION_REGISTRY["ce_style"] = ThreeArgs  # canvas-engineering's register_attention
    spec = P.get_attention_spec("ce_style")
    assert spec.factory is ThreeArgs and spec.module == __name__ and spec.provider.startswith("<in-process>")
    assert "ce_style" in P.ATTENTION_REGISTRY and "ce_style" in P.ATTENTION_TYPES
    assert P.ATTENTION_REGISTRY["ce_style"].__name__ == "ThreeArgs"
    built = canvas_core.create_attention("ce_style", d_model=8)
    assert isinstance(built, ThreeArgs) and isinstance(P.ATTENTION_REGISTRY["ce_style"](8, 2, 0.0), ThreeArgs)
    P.ATTENTION_REGISTRY.update({"ce_style_2": ThreeArgs})
    assert P.get_attention_spec("ce_style_2").module == __name__


def test_assignment_of_another_entry_is_an_alias(host):
    P.ATTENTION_REGISTRY["my_cross"] = P.ATTENTION_REGISTRY["cross_attention"]
    alias, builtin = P.get_attention_spec("my_cross"), P.get_attention_spec("cross_attention")
    assert alias.factory == builtin.factory and alias.family == builtin.family
    assert P.ATTENTION_TYPES["my_cross"] == P.ATTENTION_TYPES["cross_attention"]


def test_assignment_keeps_the_register_checks(host):
    with pytest.raises(DuplicateRegistrationError):  # as register_attention without override=True
        P.ATTENTION_REGISTRY["cross_attention"] = ThreeArgs
    assert P.get_attention_spec("cross_attention").factory != ThreeArgs
    with pytest.raises(SpecError):
        P.ATTENTION_REGISTRY["not a name!"] = ThreeArgs
    with pytest.raises(CanvasTypeError, match="cls\\(d_model, n_heads, dropout\\)"):
        P.ATTENTION_REGISTRY["only_width"] = OnlyWidth  # canvas-engineering could not build it either
    for bad in ("pkg.mod:Obj", 3):
        with pytest.raises(CanvasTypeError):
            P.ATTENTION_REGISTRY["bad_value"] = bad
    assert not {"only_width", "bad_value"} & set(P.ATTENTION_REGISTRY)


def test_deletion_unregisters_and_refuses_builtins(host):
    P.ATTENTION_REGISTRY["short_lived"] = ThreeArgs
    del P.ATTENTION_REGISTRY["short_lived"]
    assert "short_lived" not in P.ATTENTION_REGISTRY
    with pytest.raises(KeyError):
        del P.ATTENTION_REGISTRY["short_lived"]
    with pytest.raises(PluginError):
        del P.ATTENTION_REGISTRY["cross_attention"]
    with pytest.raises(PluginError):
        P.ATTENTION_REGISTRY.clear()
    assert "cross_attention" in P.ATTENTION_REGISTRY


def test_attention_types_assignment_describes_a_registered_type(host):
    P.ATTENTION_REGISTRY["described"] = ThreeArgs
    P.ATTENTION_TYPES["described"] = "my own attention"
    assert P.ATTENTION_TYPES["described"] == "my own attention"
    assert P.get_attention_spec("described").description == "my own attention"
    with pytest.raises(KeyError, match="register it first") as info:
        P.ATTENTION_TYPES["never_registered"] = "text"
    assert isinstance(info.value, UnknownNameError)
    with pytest.raises(CanvasTypeError):
        P.ATTENTION_TYPES["described"] = 3
    with pytest.raises(CanvasTypeError, match="del ATTENTION_REGISTRY"):
        del P.ATTENTION_TYPES["described"]
    with pytest.raises(KeyError):
        del P.ATTENTION_TYPES["never_registered"]
    assert "described" in P.ATTENTION_TYPES


def test_other_registries_stay_read_only(host):
    with pytest.raises(TypeError):
        P.KERNEL_REGISTRY["x"] = ThreeArgs  # type: ignore[index]
    assert not hasattr(P.KERNEL_REGISTRY, "__setitem__")


NO_TORCH = r'''
import sys
import canvas_core.plugins as P

class Light:
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        pass

P.ATTENTION_REGISTRY["light"] = Light
P.ATTENTION_TYPES["light"] = "a light type"
assert P.ATTENTION_REGISTRY["light"].__name__ == "Light" and P.ATTENTION_TYPES["light"] == "a light type"
assert P.ATTENTION_REGISTRY["cross_attention"].__name__ == "CrossAttention"
del P.ATTENTION_REGISTRY["light"]
assert "torch" not in sys.modules, "imported torch"
print("ok")
'''


def test_dict_use_does_not_import_torch():
    proc = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
