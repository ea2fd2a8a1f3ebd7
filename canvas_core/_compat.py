"""canvas-engineering's module paths (``canvas_core.masks``, ``canvas_core.graft``, ...), from one table.

canvas-engineering spread its names over flat modules; canvas-core keeps them in layers
(``schema``, ``program``, ``runtime``, ...).  So that migrating code keeps every import line, each
old module path is an *alias*: a small module object made on import from :data:`ALIASES`, with no
source file.  ``import canvas_core.masks``, ``from canvas_core.masks import Rect`` and
``from canvas_core import masks`` all work; a name is looked up only when first used (through the
lazy top-level package), so importing an alias never imports torch.

:func:`install` (called by ``canvas_core/__init__.py``) puts :class:`AliasFinder` on
``sys.meta_path``; it answers for the names in the table and nothing else.  Paths that need more
than re-exports (``canvas_core.identity``, ``canvas_core.cogvideox``) are ordinary modules.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Dict, Optional, Tuple

from canvas_core._lazy import lazy_exports

__all__ = ["Alias", "ALIASES", "AliasFinder", "install"]

PACKAGE = "canvas_core"


@dataclass(frozen=True)
class Alias:
    """One old module path.

    Attributes:
        names: the names canvas-engineering's module defined (its ``__all__`` here).
        also: names that module had only imported from elsewhere in its package; reachable, as
            they were, but not part of ``__all__``.
        renamed: name -> ``"module:attr"`` where canvas-core defines it under another name or
            outside the top-level package's list.
    """

    names: Tuple[str, ...]
    also: Tuple[str, ...] = ()
    renamed: Dict[str, str] = field(default_factory=dict)


_CLOCK = "canvas_core.program.clock_ir"

#: old module name (under ``canvas_core``) -> what it offers.
ALIASES: Dict[str, Alias] = {
    "action_heads": Alias(("ActionHead",)),
    "canvas": Alias((
        "RegionSpec", "ATTENTION_TYPES", "transfer_distance", "CanvasLayout", "SinusoidalPositionalEncodingND",
        "SinusoidalPositionalEncoding3D", "PeriodEmbedding", "FamilyCarrierEmbedding", "SpatiotemporalCanvas")),
    "checkpoint": Alias(("save_loop_checkpoint", "load_loop_checkpoint")),
    "clock_ir": Alias(
        ("ClockContext", "ClockExpr", "Periodic", "OnEvent", "BoundaryExpr", "And", "Or", "Not", "Cooldown",
         "MaxSilence", "ClockCooldown", "ClockMaxSilence", "clock_periodic", "clock_on", "clock_boundary",
         "periodic", "on", "boundary"),
        renamed={"periodic": f"{_CLOCK}:clock_periodic", "on": f"{_CLOCK}:clock_on",
                 "boundary": f"{_CLOCK}:clock_boundary"}),
    "connectivity": Alias(("TemporalFill", "Connection", "CanvasTopology"), also=("CanvasLayout",)),
    "cortex": Alias(("CortexSpec", "CortexRegistry")),
    "curriculum": Alias(("CurriculumScheduler",)),
    "dispatch": Alias(("AttentionDispatcher",),
                      also=("create_attention", "CanvasLayout", "CanvasTopology", "Connection", "TemporalFill")),
    "graft": Alias(("graft_looped_blocks", "freeze_full", "freeze_half"), also=("LoopedBlockWrapper", "ActionHead")),
    "learning": Alias(("FAMILY_DEFAULTS", "default_learning"), also=("LearningSpec",)),
    "looped_block": Alias(("LoopedBlockWrapper",)),
    "masks": Alias(("MaskSpec", "Rect", "rect_cover", "mask_to_index_pairs"), also=("CanvasLayout",)),
    "residuals": Alias(("ResidualSpec", "ResidualAccumulator")),
    "scheduling": Alias(("RegionScheduler", "LearnedScheduler"), also=("CanvasProgram", "ClockSpec")),
    "sharpening": Alias(("SharpeningSchedule",)),
    "types": Alias(
        ("Field", "LayoutStrategy", "ConnectivityPolicy", "BoundField", "BoundSchema", "compile_schema",
         "compile_program", "DEFAULT_WIRING"),
        also=("CanvasLayout", "RegionSpec", "SpatiotemporalCanvas", "CanvasTopology", "Connection", "CanvasSchema"),
        renamed={"DEFAULT_WIRING": "canvas_core.program:DEFAULT_WIRING"}),
}


def _docstring(short: str, alias: Alias) -> str:
    return (f"canvas-engineering-compatible path: ``canvas_engineering.{short}`` is ``{PACKAGE}.{short}``.\n\n"
            f"Made from the alias table in ``canvas_core/_compat.py`` (no source file): "
            f"{', '.join(alias.names)} resolve lazily to where canvas-core defines them.\n")


class AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and builds the modules of :data:`ALIASES` (``canvas_core.<name>``)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None
                  ) -> Optional[importlib.machinery.ModuleSpec]:
        package, _, short = fullname.rpartition(".")
        if package != PACKAGE or short not in ALIASES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, origin=f"alias table {__name__}")

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        short = module.__name__.rpartition(".")[2]
        alias = ALIASES[short]
        module.__doc__ = _docstring(short, alias)
        module.__all__ = list(alias.names)
        # names of the top-level package, and renamed ones from where canvas-core defines them;
        # not cached on the alias module (the top-level package caches)
        table = {n: PACKAGE for n in (*alias.names, *alias.also)}
        table.update(alias.renamed)
        module.__getattr__, module.__dir__ = lazy_exports(module.__name__, table)  # type: ignore[method-assign]


_FINDER = AliasFinder()


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_FINDER)
