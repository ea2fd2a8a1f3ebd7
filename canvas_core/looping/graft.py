"""Graft looped blocks onto a pretrained backbone; freeze strategies."""

from __future__ import annotations

import copy
from typing import Any, Callable, List, Optional, Tuple, Type

import torch
from torch import nn

from canvas_core.errors import BackboneError, CanvasError, CanvasTypeError
from canvas_core.schema._validate import is_int
from canvas_core.looping.adapter import BackboneAdapter, GenericAdapter
from canvas_core.looping.checkpoint import _schema_hash
from canvas_core.looping.loop_engine import real_number
from canvas_core.looping.graft_atomic import inside_data_parallel, rollback, snapshot, unwrap_for_graft
from canvas_core.looping.registry import resolve_adapter
from canvas_core.runtime.compiled_names import unwrap_model, wrapper_hint
from canvas_core.looping.wrapper import LoopedBlockWrapper
from canvas_core.runtime.heads import ActionHead

__all__ = [
    "graft_looped_blocks",
    "freeze_full",
    "freeze_half",
    "freeze_none",
    "get_adapter",
    "looped_blocks_of",
    "FREEZE_STRATEGIES",
]

FREEZE_STRATEGIES = ("full", "half", "none")
_ADAPTER_ATTR = "_canvas_backbone_adapter"


def _make_action_head(
    adapter: Any, latent_channels: int, action_dim: int, hidden_dim: Optional[int]
) -> nn.Module:
    """The ActionHead for the model's output layout: ``(B, T, C, *spatial)`` (channel axis 2,
    CogVideoX) by default, ``(B, C, T, *spatial)`` when the adapter's ``output_channel_dim`` is 1
    (Mochi), so ``head(model(...).sample)`` pools the right axis for every backbone."""
    cdim = getattr(adapter, "output_channel_dim", 2)
    if cdim == 1:
        from canvas_core.looping.heads import ChannelFirstActionHead

        return ChannelFirstActionHead(
            latent_channels=latent_channels, action_dim=action_dim, hidden_dim=hidden_dim
        )
    return ActionHead(
        latent_channels=latent_channels, action_dim=action_dim, hidden_dim=hidden_dim
    )


def _check_pos_int(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BackboneError(
            f"graft_looped_blocks: {name} must be an int >= 1{' or None' if optional else ''}, "
            f"got {value!r}"
        )


def looped_blocks_of(model: nn.Module) -> List[LoopedBlockWrapper]:
    """Every ``LoopedBlockWrapper`` inside ``model``, in module order (the block scope's parts;
    :func:`~canvas_core.looping.scopes.loop_parts_of` lists the parts of every scope)."""
    _check_module(model, "looped_blocks_of")
    return [m for m in model.modules() if isinstance(m, LoopedBlockWrapper)]


def get_adapter(model: nn.Module) -> BackboneAdapter:
    """The adapter ``graft_looped_blocks`` used for ``model`` (or the model that ``torch.compile``,
    ``DataParallel`` or ``DistributedDataParallel`` wraps)."""
    model = unwrap_model(model)
    a = getattr(model, _ADAPTER_ATTR, None)
    if a is None:
        raise BackboneError(
            f"{type(model).__name__} was not grafted; call graft_looped_blocks first.{wrapper_hint(model)}"
        )
    return a


def _loop_param_ids(model: nn.Module) -> set:
    from canvas_core.looping.scopes import loop_parts_of, part_loop_parameters

    return {id(p) for w in loop_parts_of(model) for p in part_loop_parameters(w)}


def _check_module(model: Any, fn: str) -> None:
    if not isinstance(model, nn.Module):
        raise CanvasTypeError(f"{fn} expects a torch nn.Module, got {type(model).__name__}")


def _refuse_ddp(model: nn.Module, fn: str) -> None:
    """Freezing under a ``DistributedDataParallel`` is refused: it chose the parameters it reduces
    (those requiring grad) when it was built, so a parameter frozen later makes its next backward
    fail, and one unfrozen later trains without being synchronised across ranks."""
    from torch.nn.parallel import DistributedDataParallel

    if any(isinstance(m, DistributedDataParallel) for m in model.modules()):
        raise BackboneError(
            f"{fn}: {type(model).__name__} is or holds a DistributedDataParallel, which chose the "
            "parameters it synchronises (those requiring grad) when it was built; changing "
            "requires_grad under it leaves a frozen parameter unreduced (its backward fails) or an "
            f"unfrozen one unsynchronised across ranks. Call {fn} on the plain model (ddp.module) "
            "before wrapping it in DistributedDataParallel, and wrap it again after a change")


def freeze_full(transformer: nn.Module) -> int:
    """Freeze every parameter except the loop parameters of grafted blocks (patch_embed,
    time embeddings, blocks, norm_out, proj_out ...). Returns the number of frozen elements."""
    _check_module(transformer, "freeze_full")
    _refuse_ddp(transformer, "freeze_full")
    keep = _loop_param_ids(transformer)
    frozen = 0
    for p in transformer.parameters():
        train = id(p) in keep
        p.requires_grad_(train)
        frozen += 0 if train else p.numel()
    return frozen


def freeze_half(transformer: nn.Module, adapter: Any = None) -> int:
    """Freeze only the input embedding (``patch_embed``); everything else trains. Returns the
    number of frozen elements."""
    _check_module(transformer, "freeze_half")
    _refuse_ddp(transformer, "freeze_half")
    transformer = unwrap_model(transformer)  # a compile / DataParallel handle: the model it holds
    a = getattr(transformer, _ADAPTER_ATTR, None) or resolve_adapter(transformer, adapter)
    frozen_ids = {id(p) for m in a.input_modules(transformer) for p in m.parameters()}
    frozen = 0
    for p in transformer.parameters():
        f = id(p) in frozen_ids
        p.requires_grad_(not f)
        frozen += p.numel() if f else 0
    return frozen


def freeze_none(transformer: nn.Module) -> int:
    """Make every parameter trainable. Returns 0."""
    _check_module(transformer, "freeze_none")
    _refuse_ddp(transformer, "freeze_none")
    for p in transformer.parameters():
        p.requires_grad_(True)
    return 0


def graft_looped_blocks(
    transformer: nn.Module,
    max_loops: int = 3,
    block_attr: Optional[str] = None,
    wrapper_class: Optional[Type] = None,
    inner_dim: Optional[int] = None,
    action_dim: int = 7,
    latent_channels: Optional[int] = None,
    freeze: str = "full",
    *,
    adapter: Any = None,
    sharpening: Optional[Callable[[int], float]] = None,
    gate_init_bias: float = 0.0,
    use_gradient_checkpointing: bool = True,
    action_hidden_dim: Optional[int] = None,
    schema: Any = None,
    scope: Any = "block",
    inject: str = "none",
    iter_embed: bool = True,
    update: str = "gated",
    damping: float = 0.5,
    iter_norm: Optional[str] = None,
    reenter: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    step_adapter: Optional[str] = None,
    batched_args: Any = None,
    unbatched_args: Any = None,
) -> Tuple[List[nn.Module], nn.Module]:
    """Replace each transformer block of ``transformer`` (in place) with a looped wrapper.

    The adapter comes from the backbone registry (installed plugins) unless ``adapter=`` is given;
    a model no adapter matches but that has a ``transformer_blocks`` / ``blocks`` list uses the
    generic adapter. ``block_attr`` forces the generic adapter on that attribute.

    Args:
        max_loops: iterations per block (``current_loops`` starts at ``max_loops``).
        freeze: ``"full"`` (only loop params train), ``"half"`` (only the input patch embedding is
            frozen) or ``"none"``.
        inner_dim: width of the loop embeddings (default: the adapter's hidden size).
        latent_channels: input width of the ActionHead (default: the adapter's, e.g. the
            model's ``out_channels``); ``action_dim``: its output width.
        sharpening: optional ``SharpeningSchedule`` applied to every block's attention per loop.
        gate_init_bias: initial gate of loops >= 1 (0 keeps the model identical to the backbone).
        schema: the ``CanvasSchema`` (or its hash) the loops are trained for; recorded on every
            looped block (``schema_hash``), written by ``save_loop_checkpoint`` and checked by
            ``load_loop_checkpoint``.
        scope: what is looped (``docs/looping.md``, "Loop scopes"): ``"block"`` (each block on its
            own, the default), ``(i, j)`` (blocks ``i..j-1`` as one recurrent core, a
            :class:`~canvas_core.looping.span.LoopedSpan`), ``"stack"`` (all blocks) or
            ``"model"`` (the whole model as a step map, a
            :class:`~canvas_core.looping.model_loop.ModelLoop`).
        inject, iter_embed, iter_norm: span scopes only (input injection ``"none"`` / ``"add"`` /
            ``"concat"``, per-iteration embeddings, ``"rms"`` norm between iterations).
        update, damping: span and model scopes: ``"gated"`` / ``"damped"`` / ``"replace"``.
        reenter, step_adapter: model scope only (output-to-input map; ``"gated"`` adapter).
        batched_args, unbatched_args: span and model scopes: names of the block's (span) or the
            model's (``"model"``) forward arguments that hold one row per sample / that are shared
            by every sample, added to the adapter's ``batched_args`` / ``unbatched_args``; the
            adaptive exit splits the first with the samples still running and passes the second
            whole (an undeclared argument holding a tensor whose first dim is the batch size is
            refused at the first forward with ``exit_tol > 0``).
        wrapper_class: ``wrapper_class(block, idx, max_loops, inner_dim)`` builds each block's
            wrapper instead of :class:`LoopedBlockWrapper` (block scope); its ``set_loops(n)`` and
            ``loop_parameters()`` (default: its parameters outside ``original``) are used by
            ``set_loops``, the schedulers and the freeze strategies.

    Returns:
        A pair: the list of looped blocks and the action head built for the model's output
        layout.  At initialisation the model's output is unchanged.
    """
    _check_module(transformer, "graft_looped_blocks")
    if scope == "model" and inside_data_parallel(transformer):
        raise BackboneError(
            "graft_looped_blocks: scope='model' replaces the model's own forward, so it is grafted on "
            "the plain model, not through DataParallel. Graft the plain model with scope='model', then "
            "wrap it in DataParallel (each replica runs the looped forward), or wrap it in "
            "DistributedDataParallel after the graft")
    # torch.compile's handle / DataParallel: graft the model it holds (DistributedDataParallel refused)
    transformer = unwrap_for_graft(transformer, "graft_looped_blocks")
    if not is_int(max_loops) or max_loops < 1:  # numpy integers too, as the schema takes them
        raise BackboneError(f"max_loops must be an int >= 1, got {max_loops!r}")
    max_loops = int(max_loops)
    from canvas_core.schema.limits import check_size

    check_size("loops", max_loops, "graft_looped_blocks max_loops")
    if freeze not in FREEZE_STRATEGIES:
        raise BackboneError(
            f"unknown freeze strategy {freeze!r}; choose one of {list(FREEZE_STRATEGIES)}"
        )
    if not is_int(action_dim) or action_dim < 1:
        raise BackboneError(f"action_dim must be an int >= 1, got {action_dim!r}")
    action_dim = int(action_dim)
    _check_pos_int("latent_channels", latent_channels, optional=True)
    _check_pos_int("inner_dim", inner_dim, optional=True)
    _check_pos_int("action_hidden_dim", action_hidden_dim, optional=True)
    gate_init_bias = _check_gate_init_bias(gate_init_bias, transformer)  # numpy floats and ints too
    if not isinstance(use_gradient_checkpointing, bool):
        raise BackboneError(
            f"graft_looped_blocks: use_gradient_checkpointing must be True or False, got "
            f"{use_gradient_checkpointing!r}")
    _refuse_meta(transformer)
    if sharpening is not None and not callable(sharpening):
        raise CanvasTypeError(
            f"graft_looped_blocks: sharpening must be a SharpeningSchedule or callable(loop_idx) "
            f"-> beta, got {type(sharpening).__name__}"
        )
    if block_attr is not None and (not isinstance(block_attr, str) or not block_attr):
        raise CanvasTypeError(
            f"graft_looped_blocks: block_attr must be the name (str) of the model's block list, "
            f"e.g. 'blocks', got {block_attr!r}"
        )
    if adapter is None and block_attr is not None:
        a = (
            resolve_adapter(transformer, None)
            if _registered_attr_is(transformer, block_attr)
            else GenericAdapter(block_attr, inner_dim)
        )
    else:
        a = resolve_adapter(transformer, adapter)
    if isinstance(a, GenericAdapter):
        # it records what it finds (block attribute) and inner_dim= sets its width: on a copy, so an
        # adapter passed in (or shared) is never changed, and a graft that fails leaves it as it was
        a = copy.copy(a)
    blocks = a.blocks(transformer)
    if not blocks:
        raise BackboneError(f"{type(transformer).__name__} has no transformer blocks to graft")
    from canvas_core.looping import scopes as _scopes

    kind, span = _scopes.parse_scope(scope, len(blocks))
    _scopes.check_scope_options(kind, inject=inject, update=update, damping=damping,
                                iter_norm=iter_norm, iter_embed=iter_embed, reenter=reenter,
                                step_adapter=step_adapter, wrapper_class=wrapper_class,
                                sharpening=sharpening, batched_args=batched_args,
                                unbatched_args=unbatched_args, gate_init_bias=gate_init_bias)
    rows = dict(zip(("batched", "unbatched"), _scopes.row_args(
        a, _scopes.check_arg_names("batched_args", batched_args),
        _scopes.check_arg_names("unbatched_args", unbatched_args))))
    if _scopes.is_grafted(transformer, blocks):
        raise BackboneError(
            f"{type(transformer).__name__} is already grafted (graft_looped_blocks ran on it and its "
            "blocks are looped wrappers); graft a fresh model, use the existing looped blocks, or "
            "call ungraft_looped_blocks(model) first"
        )
    if isinstance(a, GenericAdapter) and inner_dim is not None:
        _check_generic_width(transformer, a, inner_dim)
        a._hidden = inner_dim  # on the graft's own copy (below): the caller's adapter is not changed
    if freeze == "half":
        a.input_modules(transformer)  # refuse before the model is modified
    try:  # read everything the adapter needs before the model is modified
        dims = list(a.stream_dims(transformer))
        lc = latent_channels if latent_channels is not None else a.latent_channels(transformer)
        io = a.block_io(transformer)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, CanvasError):
            raise
        raise BackboneError(
            f"adapter {getattr(a, 'name', type(a).__name__)!r} cannot read the structure of "
            f"{type(transformer).__name__} ({type(exc).__name__}: {exc}); the model is not the "
            "backbone this adapter is for. Pass the matching adapter=, or block_attr= / inner_dim= "
            "for the generic adapter"
        ) from exc
    if inner_dim is not None:
        if not isinstance(a, GenericAdapter) and inner_dim != dims[0]:
            raise BackboneError(
                f"graft_looped_blocks: inner_dim={inner_dim} but {type(transformer).__name__}'s "
                f"hidden states are {dims[0]} wide (adapter {a.name!r}); the loop embeddings are "
                "added to the hidden states, so leave inner_dim=None"
            )
        dims[0] = inner_dim
    before = {id(m) for m in transformer.modules()}  # the modules the graft adds take the model's mode
    # by name (names survive deepcopy / pickle / .to() and are the same after ungraft), and which
    # parameter each name had, so one replaced since keeps its own flag (looping/ungraft.py)
    from canvas_core.looping.ungraft import record_requires_grad

    grads = record_requires_grad(transformer)
    saved = snapshot(transformer)  # before anything runs that may change it (a wrapper_class too)
    try:  # atomic: a step that fails leaves the model exactly as it was
        step = (_scopes.model_step_input(transformer, a, latent_channels, step_adapter)
                if kind == "model" else None)
        custom = (_scopes.custom_wrappers(wrapper_class, blocks, max_loops, dims[0])
                  if kind == "block" and wrapper_class is not None else None)
        return _graft(transformer, a, blocks, kind, span, custom, step, before, grads, dims, io, lc, rows,
                      max_loops=max_loops, schema=schema, inject=inject, iter_embed=iter_embed,
                      iter_norm=iter_norm, update=update, damping=damping,
                      gate_init_bias=gate_init_bias,
                      use_gradient_checkpointing=use_gradient_checkpointing,
                      sharpening=sharpening, reenter=reenter, step_adapter=step_adapter,
                      freeze=freeze, action_dim=action_dim, action_hidden_dim=action_hidden_dim)
    except BaseException:
        rollback(transformer, a, saved)
        raise


def _graft(transformer: nn.Module, a: Any, blocks: List[nn.Module], kind: str, span: Any,
           custom: Any, step: Any, before: set, grads: tuple, dims: List[int], io: Any, lc: int,
           rows: dict, *, max_loops: int, schema: Any, inject: str, iter_embed: bool,
           iter_norm: Optional[str], update: str, damping: float, gate_init_bias: float,
           use_gradient_checkpointing: bool, sharpening: Any, reenter: Any, step_adapter: Any,
           freeze: str, action_dim: int, action_hidden_dim: Optional[int]
           ) -> Tuple[List[nn.Module], nn.Module]:
    """The steps of :func:`graft_looped_blocks` that modify the model (every check is done)."""
    from canvas_core.looping import scopes as _scopes

    a.prepare(transformer)
    try:
        ref = next(transformer.parameters())
        device = ref.device
    except StopIteration:
        device = torch.device("cpu")
    shash = _schema_hash(schema) if schema is not None else ""
    wrapped: List[nn.Module] = []
    if kind == "span":
        part = _scopes.graft_span(
            transformer, a, blocks, span, max_loops=max_loops, dims=dims, io=io,
            scope_name="",
            options=dict(inject=inject, iter_embed=iter_embed, iter_norm=iter_norm, update=update,
                         damping=float(damping), gate_init_bias=float(gate_init_bias),
                         use_gradient_checkpointing=use_gradient_checkpointing,
                         sharpening=sharpening, **rows))
        wrapped.append(part)
    elif kind == "model":
        wrapped.append(_scopes.graft_model(
            transformer, a, max_loops=max_loops, step=step,
            options=dict(reenter=reenter, step_adapter=step_adapter, update=update,
                         damping=float(damping), gate_init_bias=float(gate_init_bias), **rows)))
    for w in wrapped:
        w.schema_hash = shash
    for i, block in enumerate(blocks if kind == "block" else []):
        if custom is not None:
            w = custom[i]
            w.__dict__[_scopes.PART_MARK] = True  # set_loops, the schedulers and freezes find it
        else:
            w = LoopedBlockWrapper(
                block,
                block_idx=i,
                max_loops=max_loops,
                embed_dim=dims[0],
                gate_init_bias=gate_init_bias,
                use_gradient_checkpointing=use_gradient_checkpointing,
                io=io,
                stream_dims=dims,
                sharpening=sharpening,
            )
        w.to(device)
        if shash:
            w.schema_hash = shash
        a.set_block(transformer, i, w)
        wrapped.append(w)
    object.__setattr__(transformer, _ADAPTER_ATTR, a)
    from canvas_core.looping.ungraft import guard_save_pretrained, keep_requires_grad, mark_forwards

    guard_save_pretrained(transformer)  # refused until ungraft_looped_blocks (looping/ungraft.py)
    mark_forwards(transformer, wrapped)  # loop_stats reports the latest forward only
    if freeze == "full":
        freeze_full(transformer)
    elif freeze == "half":
        freeze_half(transformer, a)
    else:
        freeze_none(transformer)
    keep_requires_grad(transformer, *grads)  # ungraft_looped_blocks restores these
    head = _make_action_head(a, lc, action_dim, action_hidden_dim)
    head.to(device)
    for m in transformer.modules():  # a model grafted in eval() stays in eval()
        if id(m) not in before:
            m.training = transformer.training
    head.train(transformer.training)
    return wrapped, head


def _check_gate_init_bias(value: Any, model: nn.Module) -> float:
    """``gate_init_bias`` as a float, refused (``BackboneError``, model untouched) unless it is a
    real number that the loop gates hold: they are created in torch's default dtype
    (``torch.get_default_dtype()``, float32 unless you changed it), so a value beyond that dtype's
    range (``1e39`` is finite in Python but not in float32) cannot be stored; and they are cast to
    the hidden states' dtype at use, so a float16 model also needs it within float16's range."""
    dtypes = {torch.get_default_dtype()} | {
        p.dtype for p in model.parameters() if p.is_floating_point()}
    dtype = min(dtypes, key=lambda d: float(torch.finfo(d).max))
    f = real_number(value)  # an int / Fraction beyond float64 gives inf
    if f is None:
        raise BackboneError(
            f"graft_looped_blocks: gate_init_bias must be a number, finite (0.0 keeps the graft "
            f"identical to the backbone at initialisation), got {value!r} ({type(value).__name__})")
    limit = float(torch.finfo(dtype).max)
    if f != f or not abs(f) <= limit:
        raise BackboneError(
            f"graft_looped_blocks: gate_init_bias must be a number, finite in {dtype} (the loop "
            f"gates of {type(model).__name__} are stored or used as {dtype}, range +-{limit:.4g}), "
            f"got {value!r}; pass a value in that range: 0.0 "
            "keeps the graft identical to the backbone at initialisation, 1.0 starts with full updates")
    return f


def _refuse_meta(model: nn.Module) -> None:
    """A model on the meta device has no values: loop parameters created there lose their zero
    initialisation, so the graft would not start as the backbone once the model is materialised."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise BackboneError(
                f"graft_looped_blocks: {type(model).__name__} is on the meta device ({name!r} has no "
                "values), so the loop parameters would be created there without their zero "
                "initialisation and the grafted model would not start as the backbone. Materialise "
                "the model first (model.to_empty(device=...) and load its weights, or build it with "
                "from_pretrained), then graft")


def _check_generic_width(model: nn.Module, adapter: GenericAdapter, inner_dim: int) -> None:
    """``inner_dim=`` sets the width of the generic adapter's loop embeddings; when the model says
    its own width (config / attributes / canvas layers) the two must agree."""
    own, adapter._hidden = adapter._hidden, None
    try:
        width = adapter.hidden_size(model)
    except (BackboneError, AttributeError, TypeError, ValueError):
        return  # the model does not say: inner_dim is the only source
    finally:
        adapter._hidden = own
    if width != inner_dim:
        raise BackboneError(
            f"graft_looped_blocks: inner_dim={inner_dim} but {type(model).__name__} reads as "
            f"{width} wide (its config / embed_dim / d_model / canvas layers); the loop embeddings "
            f"are added to the hidden states, so they need the hidden states' width. Leave "
            f"inner_dim=None (or pass inner_dim={width}); if {width} is not the width of the hidden "
            f"states its blocks take, pass adapter=GenericAdapter(hidden_size={inner_dim}) "
            "(canvas_core.looping.adapter) instead")


def _registered_attr_is(model: nn.Module, attr: str) -> bool:
    try:
        a = resolve_adapter(model, None)
    except BackboneError:
        return False
    return getattr(a, "block_attr", None) == attr and not isinstance(a, GenericAdapter)
