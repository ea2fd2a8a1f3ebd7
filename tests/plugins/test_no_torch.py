"""Registering, listing and resolving never import torch (nor diffusers, timm, mamba_ssm)."""

from __future__ import annotations

import subprocess
import sys

CODE = r'''
import sys
import canvas_core
import canvas_core.plugins as P
from canvas_core import register_attention, hookimpl

@register_attention("light", family="X")
class Light:
    pass

P.register_kernel("k", "some.module:K", supports=("light",), devices=("cuda",), requires=("mamba_ssm",))
names = P.list_attention_types()
assert "light" in names and "cross_attention" in names
assert P.ATTENTION_TYPES["light"].family == "X"
P.resolve_attention("cross_attention", P.RuntimeContext(device="cpu"))
P.resolve_attention("light")
P.plugin_report()
P.registry_report()
for kind in P.KINDS:
    P.get_registry(kind).names()
heavy = [m for m in ("torch", "diffusers", "timm", "mamba_ssm", "transformers") if m in sys.modules]
assert not heavy, f"imported {heavy}"
print("ok")
'''


def test_registration_and_listing_do_not_import_torch():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
