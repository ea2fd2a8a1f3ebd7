"""Looped attention: graft weight-shared iteration onto pretrained backbones.

Public: ``LoopedBlockWrapper``, ``graft_looped_blocks``, ``freeze_full``, ``freeze_half``,
``freeze_none``, ``ChannelFirstActionHead`` (the head of channel-first backbones such as Mochi),
``CurriculumScheduler``, ``SharpeningSchedule``, ``save_loop_checkpoint``,
``load_loop_checkpoint``; loop scopes: ``LoopedSpan``, ``SpanMember``, ``ModelLoop``,
``set_loops``, ``loop_counts``, ``loop_stats``, ``loop_parts_of``, ``scope_of``,
``RandomDepthScheduler``, ``LoopsClampedWarning`` (``set_loops`` clamped block-scope blocks);
adapter authors use ``BackboneAdapter``, ``TokenLayout``, ``BlockIO``.
"""

from canvas_core.looping.adapter import BackboneAdapter, GenericAdapter, TokenLayout
from canvas_core.looping.checkpoint import load_loop_checkpoint, save_loop_checkpoint
from canvas_core.looping.heads import ChannelFirstActionHead
from canvas_core.looping.graft import (
    freeze_full,
    freeze_half,
    freeze_none,
    get_adapter,
    graft_looped_blocks,
    looped_blocks_of,
)
from canvas_core.looping.registry import backbone_entries, find_adapter
from canvas_core.looping.loop_engine import LoopsClampedWarning
from canvas_core.looping.model_loop import ModelLoop
from canvas_core.looping.schedules import CurriculumScheduler, RandomDepthScheduler, SharpeningSchedule
from canvas_core.looping.scopes import loop_counts, loop_parts_of, loop_stats, scope_of, set_loops
from canvas_core.looping.span import LoopedSpan, SpanMember
from canvas_core.looping.wrapper import BlockIO, LoopedBlockWrapper

__all__ = [
    "LoopedBlockWrapper",
    "BlockIO",
    "graft_looped_blocks",
    "freeze_full",
    "freeze_half",
    "freeze_none",
    "ChannelFirstActionHead",
    "get_adapter",
    "looped_blocks_of",
    "CurriculumScheduler",
    "SharpeningSchedule",
    "save_loop_checkpoint",
    "load_loop_checkpoint",
    "BackboneAdapter",
    "GenericAdapter",
    "TokenLayout",
    "find_adapter",
    "backbone_entries",
    "LoopedSpan",
    "SpanMember",
    "ModelLoop",
    "set_loops",
    "loop_counts",
    "loop_stats",
    "loop_parts_of",
    "scope_of",
    "RandomDepthScheduler",
    "LoopsClampedWarning",
]
