"""A name whose lazy factory module cannot be found (``BROKEN`` in ``canvas plugins``).

Audit: ``resolve_attention`` returned a normal ResolvedGroup for such a name, so a program
compiled and reported it as runnable, while ``canvas plugins`` said BROKEN and using the name
raised PluginLoadError.  Resolution now raises that PluginLoadError itself (found without
importing anything), and a broken kernel is a rejected candidate."""

from __future__ import annotations

import sys

import pytest

import canvas_core.plugins as P
from canvas_core.errors import PluginLoadError, UnavailableError
from canvas_core.plugins import PluginHost, resolve_attention, use_host

BROKEN_PLUGIN = '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("{name}", "{missing}.mod:Attn")
'''


def test_a_broken_in_process_name_is_refused_by_resolution_as_by_use(host):
    P.register_attention("broken_lazy_t", "no_such_module_for_resolve_xyz.mod:Attn")
    with pytest.raises(PluginLoadError, match=r"'broken_lazy_t'.*'no_such_module_for_resolve_xyz' cannot be "
                                              r"found.*BROKEN.*register_attention"):
        resolve_attention("broken_lazy_t")
    with pytest.raises(PluginLoadError, match="broken_lazy_t"):
        P.create_attention("broken_lazy_t", 8)


def test_a_broken_installed_name_names_its_distribution(site):
    name = site.unique("broken_type")
    missing = site.unique("gone_module")
    ep = site.unique("brokenep")
    site.plugin("canvas-plugin-broken-factory", ep, BROKEN_PLUGIN.format(name=name, missing=missing))
    with use_host(PluginHost(allow=[ep])) as host:
        row = next(r for r in host.registry_report()["attention"] if r["name"] == name)
        assert row["broken"] and not row["available"]  # what `canvas plugins` shows
        with pytest.raises(PluginLoadError, match=rf"'{name}'.*canvas-plugin-broken-factory.*{missing}.*"
                                                  r"reinstall or fix canvas-plugin-broken-factory"):
            resolve_attention(name)


def test_resolving_a_broken_name_imports_nothing(host, tmp_path, monkeypatch):
    (tmp_path / "resolve_pkg_raising_abc").mkdir()
    (tmp_path / "resolve_pkg_raising_abc" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    P.register_attention("broken_child_t", "resolve_pkg_raising_abc.missing:Attn")
    with pytest.raises(PluginLoadError, match="resolve_pkg_raising_abc.missing"):
        resolve_attention("broken_child_t")
    assert "resolve_pkg_raising_abc" not in sys.modules


def test_a_missing_required_package_keeps_its_install_hint(host):
    P.register_attention("broken_needs_pkg_t", "no_such_module_for_resolve_xyz:Attn",
                         requires=("no_such_module_for_resolve_xyz",))
    with pytest.raises(UnavailableError, match="pip install"):
        resolve_attention("broken_needs_pkg_t")


def test_a_broken_kernel_is_rejected_with_its_reason_and_refused_by_name(host):
    P.register_kernel("broken_kernel_t", "no_such_kernel_module_xyz:K", supports=("cross_attention",), priority=90)
    res = resolve_attention("cross_attention")
    assert res.kernel.name == "reference" and res.fallback
    assert "cannot be found" in dict(res.rejected)["broken_kernel_t"][0]
    with pytest.raises(PluginLoadError, match=r"'broken_kernel_t'.*no_such_kernel_module_xyz.*register_kernel"):
        resolve_attention("cross_attention", kernel="broken_kernel_t")
