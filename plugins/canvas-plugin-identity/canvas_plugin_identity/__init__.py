"""canvas-plugin-identity: identity binders for regions whose program declares an ``IdentitySpec``.

Registers, through ``canvas_register_identity``, the binding functions (``IdentitySpec.binding_fn``):

* ``cross_attention`` -> :class:`~canvas_plugin_identity.binding.SlotBindingModule` (default):
  each slot queries the observations, softmax over observations;
* ``slot_attention`` -> :class:`~canvas_plugin_identity.binding.CompetitiveSlotBinding`:
  softmax over slots, so slots compete for observations.

Factories are named lazily, so registering never imports torch.
"""

from __future__ import annotations

from typing import Any

from canvas_core import hookimpl

__version__ = "0.1.0"
__all__ = ["SlotBindingModule", "CompetitiveSlotBinding", "BindingResult", "BINDERS"]

#: binding_fn name -> lazy factory (what canvas_register_identity registers)
BINDERS = {
    "cross_attention": "canvas_plugin_identity.binding:SlotBindingModule",
    "slot_attention": "canvas_plugin_identity.binding:CompetitiveSlotBinding",
}


@hookimpl
def canvas_register_identity(registry):
    registry.add(
        "cross_attention", BINDERS["cross_attention"], family="identity", complexity="O(S*N)",
        description="learned slot bank cross-attends to the observations (softmax over observations)",
        requires=("torch",),
    )
    registry.add(
        "slot_attention", BINDERS["slot_attention"], family="identity", complexity="O(S*N)",
        description="slot-attention binding: slots compete for observations (softmax over slots)",
        requires=("torch",),
    )


def __getattr__(name: str) -> Any:  # torch-backed names load on first access
    if name in ("SlotBindingModule", "CompetitiveSlotBinding", "BindingResult"):
        from canvas_plugin_identity import binding

        return getattr(binding, name)
    raise AttributeError(f"module 'canvas_plugin_identity' has no attribute {name!r}")
