"""The extension surface: everything a plugin or backend distribution may build on.

A plugin of canvas-core (an attention type, an attention kernel, a backbone adapter, an identity
binder, an embedder) imports from exactly these places and from nowhere else in the core:

* ``canvas_core`` -- the public API (the names of canvas-engineering, ``hookimpl``, ``register_*``,
  ``create_*``, ``RuntimeContext``, ...);
* ``canvas_core.extend`` -- this module: base classes, helpers and plan types for implementers;
* ``canvas_core.errors`` -- the error hierarchy (raise a ``CanvasError`` subclass naming the
  offending object and the fix);
* ``canvas_core.testing`` -- fixtures and conformance checks for a plugin's own tests;
* the public packages ``canvas_core.schema``, ``canvas_core.program``, ``canvas_core.plugins``,
  ``canvas_core.compiler`` and ``canvas_core.looping`` -- their ``__init__`` only.

**Private** is everything else: any module path with a component that starts with an underscore
(``canvas_core.attention._base``), and every submodule not in the list above
(``canvas_core.attention.recurrent``, ``canvas_core.looping.adapter``,
``canvas_core.compiler.plan``, ``canvas_core.runtime.*``, ...). Private modules move and change
between releases without notice; ``tests/architecture/test_import_graph.py`` keeps the bundled
plugins off them. When a plugin needs something that only a private module has, the fix is to
publish it here.

What this module offers (each name is documented where it is defined):

Registration (torch-free, safe to use in a plugin's top-level module)
    ``hookimpl``, ``hookspec``, ``ENTRY_POINT_GROUP``, ``Spec``, ``RuntimeContext``.
    A hook receives a registry and calls ``registry.add(name, "pkg.module:Object", ...)``; name
    the factory as a string so that registering never imports torch.
Plan types (torch-free; what a kernel is built from)
    ``ExecutionPlan``, ``RectGroup``, ``SegmentGrid``, ``BlockLayout``, ``segment_grid``,
    ``block_layout_of``, ``lower``, ``ResolvedGroup``.
Attention types (torch)
    ``AttentionBase`` (argument checks and helpers of the builtin types); tensor helpers
    ``as_dtype`` (a cast that returns the tensor itself when it needs none), ``autocast_on``
    (whether autocast is on for a device type; False on ``meta``, where torch raises),
    ``check_dtypes_devices``, ``check_additive_mask`` (refuses a float ``key_mask`` holding NaN or
    ``+inf``, naming the type), ``normalize_key_mask`` (reads any ``key_mask`` the builtin types
    accept as ``(allowed, bias)``, refusing the others with errors naming the type), ``has_key``, ``safe_div``, ``aligned_key_index``, ``causal_read_index``, ``causal_read``, ``reads_by_position`` (read positions grouped by
    position, as a compiled scan walking the keys takes them), ``masked_softmax``, ``masked_softmax_attention``; the recurrent
    references ``wkv_scan``, ``wkv_masked``, ``fft_causal_conv``; ``scratch`` (per-thread
    temporaries reused between calls, for scans that would otherwise allocate per call) and
    ``release_scratch`` (gives the calling thread's back); ``plain_linear`` (a projection whose
    weights a fused product may use in place of calling it) and ``plain_module`` (the same test
    for any module class: exactly that class, no forward hooks); ``isqrt`` (``math.isqrt`` that
    ``torch.compile`` traces over symbolic sizes).
Attention kernels (torch)
    ``AttentionKernel`` (base class: the kernel contract, the group's fn and size, shape checks),
    ``ReferenceKernel`` (the reference every kernel is checked against), ``REFERENCE_MODES`` and
    ``kernel_for(plan, fn, n_heads=, head_dim=)`` (the kernel resolution picks for a plan's group);
    the NaN-isolation helpers of masked kernels ``non_finite_keys``, ``zero_bad_keys``,
    ``nan_where_linked`` (a non-finite key reaches only the queries linked to it).
Backbones (torch)
    ``BackboneAdapter``, ``GenericAdapter``, ``TokenLayout``,
    ``class_matches``, ``LoopedBlockWrapper``, ``BlockIO``, the SDPA helper ``canvas_sdpa``,
    ``CanvasAttentionHooks`` (what an attention object inside a grafted backbone reads: sharpening
    ``beta``, an installed topology), ``CanvasProcessorBase`` (the shared part of a backbone
    attention processor) and ``guard_input_shapes`` (checks each call's input shapes against the
    ones an installed topology was built for).
Compiled CPU kernels (torch-free until a build or load)
    ``CpuKernel`` (a C++ source with ``TORCH_LIBRARY`` operators built on first use and cached per
    source, core's shared header ``kernels/csrc/cpu_vec.h`` (on its include path), flags, torch and
    CPU, chosen by an auto / 0 / 1 environment variable, warning once and
    naming why when it cannot run) and ``CpuKernelBuildWarning`` (that warning's base class).
Identity binders (torch)
    ``BindingResult`` (what a binder's ``bind`` returns; its docstring states the binder contract).

Importing this module imports neither torch nor any plugin: every name loads on first access
(PEP 562), so a plugin's registration module may import ``hookimpl`` from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict

from canvas_core._lazy import lazy_exports
from canvas_core.plugins.hookspecs import ENTRY_POINT_GROUP, hookimpl, hookspec

if TYPE_CHECKING:  # for readers and IDEs; at run time the names load lazily below
    from canvas_core.attention._base import (
        AttentionBase, aligned_key_index, as_dtype, autocast_on, causal_read_index, check_dtypes_devices, has_key,
        operators_under_compile, safe_div,
    )
    from canvas_core.attention.key_masks import check_additive_mask, normalize_key_mask
    from canvas_core.attention.first_order import first_order_backward, first_order_only
    from canvas_core.attention.functional import masked_softmax, masked_softmax_attention
    from canvas_core.attention.recurrent import fft_causal_conv, wkv_masked, wkv_scan
    from canvas_core.attention.causal_read import (causal_read, plain_linear, plain_module, reads_by_position,
                                                   release_scratch, scratch)
    from canvas_core.compiler.lowering import lower
    from canvas_core.compiler.plan import (
        BlockLayout, ExecutionPlan, RectGroup, SegmentGrid, block_layout_of, segment_grid,
    )
    from canvas_core.plugins.resolve import ResolvedGroup
    from canvas_core.looping.adapter import (
        BackboneAdapter, GenericAdapter, TokenLayout, class_matches,
    )
    from canvas_core.looping.processor import CanvasAttentionHooks, CanvasProcessorBase, canvas_sdpa
    from canvas_core.looping.wrapper import BlockIO, LoopedBlockWrapper
    from canvas_core.devices import RuntimeContext
    from canvas_core.identity import BindingResult
    from canvas_core.kernels.cpu_build import CpuKernel, CpuKernelBuildWarning
    from canvas_core.plugins.spec import Spec
    from canvas_core.runtime.kernel_base import AttentionKernel
    from canvas_core.runtime.finite_guard import nan_where_linked, non_finite_keys, zero_bad_keys
    from canvas_core.runtime.kernels import REFERENCE_MODES, ReferenceKernel, kernel_for

#: published name -> the module that defines it (internal; may change without notice)
_SOURCES: Dict[str, str] = {}


def _publish(module: str, *names: str) -> None:
    for n in names:
        _SOURCES[n] = module


# registration
_publish("canvas_core.plugins.spec", "Spec")
_publish("canvas_core.devices", "RuntimeContext")
# plan types
_publish("canvas_core.compiler.plan", "ExecutionPlan", "RectGroup", "SegmentGrid", "BlockLayout",
         "segment_grid", "block_layout_of")
_publish("canvas_core.compiler.lowering", "lower")
_publish("canvas_core.plugins.resolve", "ResolvedGroup")
# attention types
_publish("canvas_core.attention._base", "AttentionBase", "as_dtype", "check_dtypes_devices", "has_key", "safe_div",
         "aligned_key_index", "causal_read_index", "operators_under_compile", "autocast_on")
_publish("canvas_core.attention.key_masks", "check_additive_mask", "normalize_key_mask")
_publish("canvas_core.attention.functional", "masked_softmax", "masked_softmax_attention")
_publish("canvas_core.attention.first_order", "first_order_backward", "first_order_only")
_publish("canvas_core.attention.recurrent", "wkv_scan", "wkv_masked", "fft_causal_conv")
_publish("canvas_core.attention.int_roots", "isqrt")
_publish("canvas_core.attention.causal_read", "causal_read", "reads_by_position", "scratch", "release_scratch", "plain_linear", "plain_module")
# size limits (refuse a user's size before allocating: SizeLimitError names it and the variable)
_publish("canvas_core.schema.limits", "check_size", "check_elements", "check_bytes")
# kernels
_publish("canvas_core.runtime.kernel_base", "AttentionKernel")
_publish("canvas_core.runtime.kernels", "ReferenceKernel", "REFERENCE_MODES", "kernel_for")
_publish("canvas_core.runtime.finite_guard", "non_finite_keys", "zero_bad_keys", "nan_where_linked")
# backbones
_publish("canvas_core.looping.adapter", "BackboneAdapter", "GenericAdapter", "TokenLayout",
         "class_matches")
_publish("canvas_core.looping.wrapper", "LoopedBlockWrapper", "BlockIO")
_publish("canvas_core.looping.processor", "canvas_sdpa", "CanvasAttentionHooks", "CanvasProcessorBase")
_publish("canvas_core.looping.installed", "guard_input_shapes")
# compiled CPU kernels
_publish("canvas_core.kernels.cpu_build", "CpuKernel", "CpuKernelBuildWarning")
# identity binders
_publish("canvas_core.identity", "BindingResult")

#: every published name (a test checks that each resolves)
__all__ = [
    "AttentionBase", "AttentionKernel", "BackboneAdapter", "BindingResult", "BlockIO", "BlockLayout", "CanvasAttentionHooks",
    "CanvasProcessorBase", "CpuKernel", "CpuKernelBuildWarning",
    "ENTRY_POINT_GROUP", "ExecutionPlan", "GenericAdapter", "LoopedBlockWrapper",
    "REFERENCE_MODES", "RectGroup", "ReferenceKernel", "ResolvedGroup", "RuntimeContext",
    "SegmentGrid", "Spec", "TokenLayout", "aligned_key_index", "as_dtype", "autocast_on", "block_layout_of", "canvas_sdpa",
    "causal_read", "causal_read_index", "check_additive_mask", "check_bytes", "check_dtypes_devices", "check_elements", "check_size", "class_matches", "fft_causal_conv",
    "first_order_backward",
    "first_order_only", "guard_input_shapes", "has_key",
    "hookimpl", "isqrt", "hookspec", "kernel_for", "lower", "masked_softmax", "masked_softmax_attention", "nan_where_linked",
    "non_finite_keys", "normalize_key_mask", "operators_under_compile", "plain_linear", "plain_module", "reads_by_position", "release_scratch", "safe_div", "scratch", "zero_bad_keys",
    "segment_grid", "wkv_masked", "wkv_scan",
]


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES, globals())  # cached on first access
