"""Registries: duplicates, override, unknown names with hints, spec validation, lazy loading."""

from __future__ import annotations

import types

import pytest

import canvas_core.plugins as P
from canvas_core.errors import (
    CanvasError,
    CanvasTypeError,
    DuplicateRegistrationError,
    PluginLoadError,
    UnavailableError,
    UnknownNameError,
)
from canvas_core.plugins import hookimpl


def _plugin(**hooks):
    """A plugin object whose hooks register the given {kind: [(name, factory, metadata)]}."""
    ns = types.SimpleNamespace()
    hook_of = {"attention": "canvas_register_attention", "kernels": "canvas_register_kernels",
               "backbones": "canvas_register_backbones", "identity": "canvas_register_identity",
               "embedders": "canvas_register_embedders"}
    for kind, entries in hooks.items():
        def hook(registry, _entries=entries):
            for name, factory, md in _entries:
                registry.add(name, factory, **md)
        setattr(ns, hook_of[kind], hookimpl(hook))
    return ns


class Dummy:
    def __init__(self, **kw):
        self.kw = kw


def test_duplicate_between_plugins_names_both_distributions(host):
    host.register_plugin(_plugin(attention=[("dup_attn", Dummy, {})]), "pa", distribution="dist-alpha", version="1.0")
    with pytest.raises(DuplicateRegistrationError) as ei:
        host.register_plugin(_plugin(attention=[("dup_attn", Dummy, {})]), "pb", distribution="dist-beta", version="2.0")
    msg = str(ei.value)
    assert "dist-alpha 1.0" in msg and "dist-beta 2.0" in msg and "override=True" in msg
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, CanvasError)
    # the failed plugin left nothing behind; the first one still provides the name
    assert "pb" not in host.records
    assert P.get_attention_spec("dup_attn").distribution == "dist-alpha"


def test_duplicate_in_process_vs_builtin(host):
    with pytest.raises(DuplicateRegistrationError) as ei:
        P.register_attention("cross_attention", Dummy)
    assert "canvas-core" in str(ei.value) and "<in-process>" in str(ei.value)
    assert __name__ in str(ei.value)  # the registering module is named


def test_override_replaces_and_unregister_restores(host):
    builtin = P.get_attention_spec("cross_attention")
    spec = P.register_attention("cross_attention", Dummy, override=True, family="Mine")
    assert P.get_attention_spec("cross_attention") is spec
    assert P.ATTENTION_TYPES["cross_attention"].family == "Mine"
    removed = P.unregister_attention("cross_attention")
    assert removed is spec
    assert P.get_attention_spec("cross_attention") is builtin


def test_override_by_plugin(host):
    host.register_plugin(_plugin(attention=[("pooling", Dummy, {"override": True})]), "ovr", distribution="d-ovr")
    assert P.get_attention_spec("pooling").distribution == "d-ovr"
    host.unregister_plugin("ovr")
    assert P.get_attention_spec("pooling").distribution == "canvas-core"


def test_unknown_name_lists_known_closest_and_no_hint(host):
    with pytest.raises(UnknownNameError) as ei:
        P.create_attention("linear_atention", d_model=8)
    err = ei.value
    msg = str(err)
    assert "Did you mean 'linear_attention'" in msg
    for name in ("cross_attention", "pooling", "hyena"):
        assert name in msg
    assert err.suggestion == "linear_attention"
    assert "cross_attention" in err.known
    assert isinstance(err, KeyError) and isinstance(err, LookupError)
    assert not msg.startswith('"')  # not quoted like a bare KeyError


@pytest.mark.parametrize("kind,name,dist", [
    ("attention", "mamba", "canvas-plugin-mamba"),
    ("attention", "canvas_read", "canvas-plugin-canvit"),
    ("attention", "canvas_write", "canvas-plugin-canvit"),
    ("backbones", "cogvideox", "canvas-plugin-cogvideox"),
    ("backbones", "mochi", "canvas-plugin-mochi"),
    ("backbones", "vit", "canvas-plugin-vit"),
    ("kernels", "flex", "canvas-backend-flex"),
    ("kernels", "xformers", "canvas-backend-xformers"),
    ("identity", "slot_attention", "canvas-plugin-identity"),
    ("embedders", "minilm", "canvas-plugin-semantic"),
    ("embedders", "sentence-transformers", "canvas-plugin-semantic"),
])
def test_unknown_name_install_hint(host, kind, name, dist):
    with pytest.raises(UnknownNameError) as ei:
        P.get_spec(kind, name)
    assert f"pip install {dist}" in str(ei.value)
    assert ei.value.distribution == dist


def test_registry_view_is_live_and_refuses_what_cannot_be_built(host):
    view = P.ATTENTION_REGISTRY
    assert "cross_attention" in view and "nope" not in view
    assert view.get("nope") is None
    # assignment registers (canvas-engineering's way), but only what cls(d_model, n_heads, dropout) builds
    with pytest.raises(TypeError):
        view["x"] = Dummy  # type: ignore[index]
    assert "x" not in view
    with pytest.raises(KeyError):
        view["nope"]
    assert "fresh_view_type" not in view
    P.register_attention("fresh_view_type", Dummy)
    assert "fresh_view_type" in view and view["fresh_view_type"].factory is Dummy
    assert list(view) == sorted(view) and len(view) == len(P.list_attention_types())


def test_attention_types_catalogue_is_derived(host):
    assert set(P.ATTENTION_TYPES) == set(P.list_attention_types())
    info = P.ATTENTION_TYPES["linear_attention"]
    assert isinstance(info, str) and info == info.description and info.family == "Dot-product"
    assert info.complexity == "O(N+M)" and info.provider == "canvas-core"
    P.register_attention("catalogued", Dummy, family="Fam", complexity="O(1)", description="a new type")
    new = P.ATTENTION_TYPES["catalogued"]
    assert new == "a new type" and new.family == "Fam" and new.complexity == "O(1)"
    assert new.provider.startswith("<in-process>")
    P.unregister_attention("catalogued")
    assert "catalogued" not in P.ATTENTION_TYPES


def test_builtin_table_matches_readme_lineup(host):
    # family / complexity of the canvas-engineering README table ("The lineup")
    lineup = {
        "cross_attention": ("Dot-product", "O(NM)"), "linear_attention": ("Dot-product", "O(N+M)"),
        "cosine_attention": ("Dot-product", "O(NM)"), "sigmoid_attention": ("Dot-product", "O(NM)"),
        "gated": ("Gating", "O(NM)"), "perceiver": ("Compression", "O(NK)"),
        "pooling": ("Compression", "O(N+M)"), "copy": ("Transfer", "O(N)"),
        "rwkv": ("State-space", "O(N)"), "hyena": ("Convolution", "O(N log N)"),
        "sparse_attention": ("Sparse", "O(NK)"), "local_attention": ("Sparse", "O(NW)"),
        "none": ("Meta", "O(0)"), "random_fixed": ("Meta", "O(NK)"), "mixture": ("Meta", "O(NK)"),
    }
    for name, (family, complexity) in lineup.items():
        spec = P.get_attention_spec(name)
        assert (spec.family, spec.complexity) == (family, complexity), name
        assert spec.description and spec.distribution == "canvas-core"
        assert spec.factory.startswith("canvas_core.attention:")
    assert P.get_kernel_spec("reference").supports[0] == "cross_attention"


def test_spec_validation_errors(host):
    with pytest.raises(CanvasError, match="invalid attention name"):
        P.register_attention("bad name!", Dummy)
    with pytest.raises(CanvasError, match="malformed factory path"):
        P.register_attention("badpath", "not a path")
    with pytest.raises(CanvasTypeError, match="factory must be"):
        P.register_attention("notcallable", 42)
    with pytest.raises(CanvasTypeError, match="priority"):
        P.register_kernel("k", Dummy, priority="high")
    with pytest.raises(CanvasTypeError, match="check"):
        P.register_attention("chk", Dummy, check="nope")


def test_lazy_factory_and_load_error(host):
    spec = P.register_attention("lazy_ok", "collections:OrderedDict")
    assert spec._loaded is None
    import collections

    assert spec.load() is collections.OrderedDict
    P.register_attention("lazy_bad", "canvas_no_such_module_xyz.sub:Thing")
    with pytest.raises(PluginLoadError) as ei:
        P.create_attention("lazy_bad", d_model=8)
    msg = str(ei.value)
    assert "lazy_bad" in msg and "canvas_no_such_module_xyz" in msg and "<in-process>" in msg
    assert isinstance(ei.value, ImportError)
    P.register_attention("lazy_attr", "collections:NoSuchThing")
    with pytest.raises(PluginLoadError, match="NoSuchThing"):
        P.get_attention_spec("lazy_attr").load()


def test_create_refuses_missing_requirement(host):
    P.register_attention("needs_pkg", Dummy, requires=("canvas_missing_pkg_abc",))
    with pytest.raises(UnavailableError, match="canvas_missing_pkg_abc"):
        P.create_attention("needs_pkg", d_model=8)


def test_create_attention_passes_arguments(host):
    class Rec:
        def __init__(self, d_model, n_heads=4, dropout=0.0, window=3):
            self.args = (d_model, n_heads, dropout, window)

    P.register_attention("rec", Rec)
    assert P.create_attention("rec", 16, n_heads=2, dropout=0.1, window=5).args == (16, 2, 0.1, 5)
    assert P.create_attention("rec", 16).args == (16, 4, 0.0, 3)

    class NoHeads:
        def __init__(self, d_model):
            self.d = d_model

    P.register_attention("noheads", NoHeads)
    assert P.create_attention("noheads", 8, n_heads=2).d == 8
    with pytest.raises(CanvasTypeError, match="dropout"):
        P.create_attention("noheads", 8, dropout=0.5)


@pytest.mark.parametrize("kind", ["kernels", "backbones", "identity", "embedders"])
def test_trio_for_every_kind(host, kind):
    noun = {"kernels": "kernel", "backbones": "backbone", "identity": "identity_binder",
            "embedders": "embedder"}[kind]
    lister = {"kernels": P.list_kernels, "backbones": P.list_backbones,
              "identity": P.list_identity_binders, "embedders": P.list_embedders}[kind]
    register = getattr(P, f"register_{noun}")
    create = getattr(P, f"create_{noun}")
    unregister = getattr(P, f"unregister_{noun}")
    register(f"t_{kind}", Dummy, description="x")
    assert f"t_{kind}" in lister()
    obj = create(f"t_{kind}", a=1)
    assert isinstance(obj, Dummy) and obj.kw == {"a": 1}
    with pytest.raises(DuplicateRegistrationError):
        register(f"t_{kind}", Dummy)
    unregister(f"t_{kind}")
    assert f"t_{kind}" not in lister()
    with pytest.raises(UnknownNameError):
        create(f"t_{kind}")


def test_extra_metadata_kept(host):
    spec = P.register_backbone("bb", "x.y:Z", model_classes=("diffusers.Foo",), requires="diffusers")
    assert spec.metadata == {"model_classes": ("diffusers.Foo",)}
    assert spec.requires == ("diffusers",)
    assert spec.kind == "backbones"


def test_hosts_are_isolated():
    a, b = P.PluginHost(autoload=False), P.PluginHost(autoload=False)
    a.register("attention", "only_in_a", Dummy)
    assert "only_in_a" in a.registry("attention")
    assert "only_in_a" not in b.registry("attention")
    with P.use_host(b):
        assert "only_in_a" not in P.ATTENTION_REGISTRY
    with P.use_host(a):
        assert "only_in_a" in P.ATTENTION_REGISTRY


def test_reset_forgets_in_process(host):
    P.register_attention("temp_type", Dummy)
    host.reset()
    assert "temp_type" not in P.list_attention_types()
    assert "cross_attention" in P.list_attention_types()
