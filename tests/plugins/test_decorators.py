"""register_* call and decorator forms, provider of in-process registrations."""

from __future__ import annotations

import pytest

import canvas_core
import canvas_core.plugins as P
from canvas_core.errors import DuplicateRegistrationError
from canvas_core.plugins import IN_PROCESS


def test_markers_exported():
    assert canvas_core.hookimpl is P.hookimpl and canvas_core.hookspec is P.hookspec
    from canvas_core.plugins import hookspecs

    assert sorted(hookspecs.HOOK_NAMES) == sorted([
        "canvas_register_attention", "canvas_register_kernels", "canvas_register_backbones",
        "canvas_register_identity", "canvas_register_embedders"])
    for name in hookspecs.HOOK_NAMES:
        assert hasattr(getattr(hookspecs, name), "canvas_spec")


def test_call_form_returns_spec(host):
    class A:
        pass

    spec = P.register_attention("call_form", A, family="F", description="d")
    assert spec.factory is A and spec.family == "F" and spec.distribution == IN_PROCESS
    assert spec.module == __name__ and spec.provider == f"{IN_PROCESS} ({__name__})"


def test_decorator_with_name_and_metadata(host):
    @P.register_attention("deco_named", family="Deco", complexity="O(1)")
    class Whatever:
        pass

    assert isinstance(Whatever, type)  # the decorator returns the class itself
    spec = P.get_attention_spec("deco_named")
    assert spec.factory is Whatever and spec.family == "Deco" and spec.module == __name__


def test_bare_decorator_snake_case_and_name_attribute(host):
    @P.register_attention
    class MyFancyAttention:
        pass

    @P.register_attention
    class Named:
        name = "explicit_name"

    @P.register_kernel(supports=("cross_attention",))
    class HTTPKernel:
        pass

    assert P.get_attention_spec("my_fancy_attention").factory is MyFancyAttention
    assert P.get_attention_spec("explicit_name").factory is Named
    assert P.get_kernel_spec("http_kernel").supports == ("cross_attention",)


def test_function_factory_and_decorator_duplicate(host):
    @P.register_attention("fn_factory")
    def build(d_model, n_heads=4, dropout=0.0):
        return ("built", d_model, n_heads)

    assert P.create_attention("fn_factory", 12, n_heads=3) == ("built", 12, 3)
    with pytest.raises(DuplicateRegistrationError):
        @P.register_attention("fn_factory")
        def again(d_model):
            return None


def test_canvas_engineering_cls_keyword(host):
    class Legacy:
        def __init__(self, d_model, n_heads=4, dropout=0.0):
            self.d = d_model

    P.register_attention("legacy", cls=Legacy)
    assert P.create_attention("legacy", 8).d == 8


def test_registration_shows_in_report(host):
    P.register_embedder("my_embedder", "x.y:E")
    rec = {r["name"]: r for r in P.plugin_report()}[IN_PROCESS]
    assert rec["source"] == "in-process" and rec["registered"] == {"embedders": ["my_embedder"]}
