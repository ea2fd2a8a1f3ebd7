"""canvas-core: declare the structure of a transformer's latent space, compile it to fast modules.

Everything public is importable from here.  Names are resolved lazily (PEP 562, through ``canvas_core._lazy``), so
``import canvas_core`` and the declarative layers (schema, program, plugins, compiler)
never import torch; torch-backed names import it on first access.
"""

from __future__ import annotations

from canvas_core._lazy import lazy_exports as _lazy_exports
from canvas_core.errors import *  # noqa: F401,F403  (the error hierarchy is tiny and torch-free)
from canvas_core.errors import __all__ as _error_names

__version__ = "0.1.0"

# canvas-engineering's flat module paths (canvas_core.masks, canvas_core.graft, ...) come from one
# alias table; see canvas_core/_compat.py
from canvas_core import _compat as _compat_paths  # noqa: E402

_compat_paths.install()

# public name -> module that defines it.  Keep grouped by layer (see docs/design.md).
_LAZY: dict[str, str] = {}


def _export(module: str, *names: str) -> None:
    for n in names:
        _LAZY[n] = module


# layer 1: schema (pure Python)
_export(
    "canvas_core.schema",
    "RegionSpec", "CanvasLayout", "transfer_distance",
    "Connection", "TemporalFill", "CanvasTopology",
    "CanvasSchema", "schema_json_schema",
)
_export("canvas_core.schema.masks", "MaskSpec", "Rect", "rect_cover", "mask_to_index_pairs")
_export("canvas_core.schema.limits", "size_limits")
# layer 2: program (pure Python)
_export(
    "canvas_core.program",
    "Field", "LayoutStrategy", "ConnectivityPolicy", "BoundField", "BoundSchema",
    "compile_schema", "compile_program",
    "CanvasProgram", "RegionProgram", "ConnectionProgram",
    "ClockSpec", "LearningSpec", "ConstraintSpec", "validate_constraints", "IdentitySpec",
    "REGION_FAMILIES", "CARRIERS", "OPERATORS", "WRITE_MODES", "COMPILE_MODES",
)
_export("canvas_core.program.learning", "default_learning", "FAMILY_DEFAULTS")
_export(
    "canvas_core.program.clock_ir",
    "ClockExpr", "ClockContext", "Periodic", "OnEvent", "BoundaryExpr", "And", "Or", "Not",
    "Cooldown", "MaxSilence", "ClockCooldown", "ClockMaxSilence",
    "clock_periodic", "clock_on", "clock_boundary",
)
_export("canvas_core.program.cortex", "CortexSpec", "CortexRegistry")
_export(
    "canvas_core.semantic",
    "SemanticConditioner", "auto_semantic_type", "compute_semantic_embeddings", "program_distance",
)
# layer 3: plugins (pure Python)
_export(
    "canvas_core.plugins",
    "hookspec", "hookimpl", "get_plugin_manager", "plugin_report",
    "ATTENTION_REGISTRY", "ATTENTION_TYPES",
    "register_attention", "create_attention", "list_attention_types",
    "register_kernel", "create_kernel", "list_kernels",
    "register_backbone", "create_backbone", "list_backbones",
    "register_identity_binder", "create_identity_binder", "list_identity_binders",
    "register_embedder", "create_embedder", "list_embedders",
    "unregister_attention", "unregister_kernel", "unregister_backbone",
    "unregister_identity_binder", "unregister_embedder",
    "resolve_attention", "RuntimeContext", "registry_report",
)
# layer 4: compiler
_export("canvas_core.compiler", "ProgramCompiler", "CompiledProgram", "ExecutionPlan")
# layer 5: torch runtime
_export(
    "canvas_core.attention",
    "CrossAttention", "LinearAttention", "CosineAttention", "SigmoidAttention", "GatedAttention",
    "PerceiverAttention", "PoolingAttention", "CopyAttention", "SparseAttention", "LocalAttention",
    "NoneAttention", "RandomFixedAttention", "MixtureAttention", "RWKVAttention", "HyenaAttention",
)
_export(
    "canvas_core.runtime.canvas",
    "SpatiotemporalCanvas", "SinusoidalPositionalEncodingND", "SinusoidalPositionalEncoding3D",
    "PeriodEmbedding", "FamilyCarrierEmbedding",
)
_export("canvas_core.runtime.heads", "ActionHead")
_export("canvas_core.runtime.scheduling", "RegionScheduler", "LearnedScheduler")
_export("canvas_core.runtime.residuals", "ResidualSpec", "ResidualAccumulator")
_export("canvas_core.runtime.canvas_attention", "CanvasAttention")
_export("canvas_core.runtime.dispatch", "AttentionDispatcher")
_export("canvas_core.runtime.verify", "verify_structure", "StructureReport")
_export("canvas_core.runtime.telemetry", "record_telemetry", "telemetry", "Telemetry")
_export("canvas_core.runtime.regional_compile", "compile_blocks")
_export("canvas_core.runtime.incremental", "incremental", "Rollout", "RolloutError")
_export(
    "canvas_core.runtime.sequence_parallel",
    "SequenceParallelCanvasAttention", "CanvasSharding", "shard_canvas", "unshard_canvas",
    "sequence_parallel_mesh", "parallelize_canvas", "SequenceParallelError",
)
_export(
    "canvas_core.looping",
    "LoopedBlockWrapper", "graft_looped_blocks", "freeze_full", "freeze_half", "freeze_none",
    "CurriculumScheduler", "SharpeningSchedule", "save_loop_checkpoint", "load_loop_checkpoint",
    "set_loops", "loop_counts", "loop_stats", "LoopedSpan", "ModelLoop", "RandomDepthScheduler",
)
_export("canvas_core.looping.ungraft", "ungraft_looped_blocks")
_export("canvas_core.checkpoints", "save_canvas_checkpoint", "load_canvas_checkpoint", "read_canvas_checkpoint_header")
_export("canvas_core.identity", "SlotBindingModule")
# types supplied by optional plugin distributions, re-exported when installed
_export("canvas_core.reexports", "MambaAttention", "CogVideoXAttention")

# names re-exported from optional plugin distributions stay out of `import *`
_OPTIONAL = {"MambaAttention", "CogVideoXAttention", "SlotBindingModule"}
__all__ = sorted([*(n for n in _LAZY if n not in _OPTIONAL), *_error_names, "__version__"])


# resolved on first access and cached here (canvas_core/_lazy.py)
__getattr__, __dir__ = _lazy_exports(__name__, _LAZY, globals())
