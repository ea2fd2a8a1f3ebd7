"""Backbone adapters: what canvas-core needs to know about a pretrained model to graft it.

An adapter is a small stateless class. Plugins register one per model family through the
``canvas_register_backbones(registry)`` hook; :func:`find_adapter` picks the adapter whose
``model_classes`` match the model's class (by name, without importing the plugin or its
library for models that are not theirs). See ``docs/backbones.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from canvas_core.errors import BackboneError, CanvasTypeError
from canvas_core.looping.installed import guard_input_shapes
from canvas_core.looping.wrapper import BlockIO

__all__ = [
    "TokenLayout",
    "BackboneAdapter",
    "GenericAdapter",
    "class_matches",
]

#: ``read(module, args, kwargs)`` of an input guard: the call's shapes (see ``input_guards``)
ReadFn = Callable[[nn.Module, Tuple[Any, ...], Dict[str, Any]], Mapping[str, Any]]


class _NoTopology:
    """Takes an installed topology's place in the input guards of a prepared model without one:
    the guards' ``read`` still refuses the calls the backbone cannot run; no shape is compared."""

    def check_shapes(self, given: Any) -> None:
        return None


_NO_TOPOLOGY = _NoTopology()


def _no_shapes(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The ``read`` of the model's own guard where an adapter declares none: no shape to compare."""
    return {}


@dataclass(frozen=True)
class TokenLayout:
    """Where each token of a block's attention sequence sits on the canvas.

    ``layout`` is the canvas (a ``CanvasLayout``); ``token_index[k]`` is the canonical flat canvas
    index of the k-th token of the joint attention sequence (in the order the backbone's attention
    sees them, e.g. ``[text..., video...]`` for CogVideoX). Canvas positions with no token are
    allowed (padding rows); two tokens may not share one position.
    """

    layout: Any
    token_index: Tuple[int, ...]
    info: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.layout.num_positions
        bad = [i for i in self.token_index if not 0 <= i < n]
        if bad:
            raise BackboneError(f"token_index has positions outside the canvas (N={n}): {bad[:5]}")
        if len(set(self.token_index)) != len(self.token_index):
            raise BackboneError("token_index maps two tokens to the same canvas position")

    @property
    def seq_len(self) -> int:
        return len(self.token_index)

    def with_layout(self, layout: Any) -> "TokenLayout":
        """Same token placement on a user layout with the same grid (other regions)."""
        if (layout.T, tuple(layout.spatial_shape)) != (
            self.layout.T,
            tuple(self.layout.spatial_shape),
        ):
            raise BackboneError(
                f"layout grid (T={layout.T}, spatial={tuple(layout.spatial_shape)}) differs from "
                "the "
                f"backbone's token grid (T={self.layout.T}, "
                f"spatial={tuple(self.layout.spatial_shape)});"
                " declare your regions on the grid returned by adapter.token_layout(...)"
            )
        return TokenLayout(layout, self.token_index, dict(self.info))


def _class_names(cls: type) -> List[Tuple[str, str, str]]:
    out = []
    for c in cls.__mro__:
        mod = getattr(c, "__module__", "") or ""
        out.append((mod, mod.split(".")[0], c.__qualname__))
    return out


def class_matches(model: Any, patterns: Sequence[str]) -> bool:
    """True if a class in ``type(model).__mro__`` matches one of ``patterns``: a bare class name
    (``"CogVideoXTransformer3DModel"``), ``"<top package>.<Class>"`` (``"diffusers.X"``) or the
    full dotted path. Never imports anything."""
    names = _class_names(type(model))
    for p in patterns:
        for mod, top, qual in names:
            if p == qual or p == f"{top}.{qual}" or p == f"{mod}.{qual}":
                return True
    return False


class BackboneAdapter:
    """Base class of backbone adapters. Override what differs from the defaults.

    Class attributes: ``name``; ``model_classes`` (patterns for :func:`class_matches`);
    ``block_attr`` (attribute holding the block list); ``streams`` (looped inputs of a block);
    ``output_channel_dim``: the channel axis of the model's output the ActionHead reads (2 for
    ``(B, T, C, *spatial)`` as CogVideoX, 1 for ``(B, C, T, *spatial)`` as Mochi).
    """

    name: str = "base"
    model_classes: Tuple[str, ...] = ()
    block_attr: Optional[str] = None
    streams: Tuple[str, ...] = ("hidden_states",)
    input_attrs: Tuple[str, ...] = ("patch_embed",)
    output_channel_dim: int = 2
    #: block / forward arguments whose first dim is not the batch (never split by adaptive exit)
    unbatched_args: Tuple[str, ...] = ("image_rotary_emb",)
    #: block / forward arguments that hold one row per sample (split with the samples still
    #: running by adaptive exit): diffusers' names; any other argument holding a tensor whose first
    #: dim equals the batch size must be declared (``graft_looped_blocks(batched_args=...)``)
    batched_args: Tuple[str, ...] = ("encoder_hidden_states", "encoder_attention_mask", "temb",
                                     "timestep", "timestep_cond", "ofs")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return bool(cls.model_classes) and class_matches(model, cls.model_classes)

    # --- structure -----------------------------------------------------------------------------
    def block_container(self, model: nn.Module) -> nn.Module:
        attr = self.block_attr
        cont = getattr(model, attr, None) if attr else None
        if not isinstance(cont, (nn.ModuleList, nn.Sequential)):
            raise BackboneError(
                f"{type(model).__name__} has no block list {attr!r} "
                "(nn.ModuleList / nn.Sequential);"
                f" adapter {self.name!r} cannot find its blocks"
            )
        return cont

    def blocks(self, model: nn.Module) -> List[nn.Module]:
        """The model's transformer blocks, in order."""
        return list(self.block_container(model))

    def set_block(self, model: nn.Module, index: int, block: nn.Module) -> None:
        """Replace block ``index`` in place.  When one of the two wraps the other (grafting,
        ungrafting), the gated modules of an installed topology (``canvas_fn``) move to the block
        now in the slot, so they stay loop parameters and ``remove_topology`` finds them."""
        from canvas_core.looping.topology_install import HOLDER_ATTR

        cont = self.block_container(model)
        old = cont[index]
        fns = getattr(old, "_modules", {}).get(HOLDER_ATTR)
        wraps = getattr(block, "original", None) is old or getattr(old, "original", None) is block
        if fns is not None and wraps and HOLDER_ATTR not in getattr(block, "_modules", {}):
            del old._modules[HOLDER_ATTR]
            block.add_module(HOLDER_ATTR, fns)
        cont[index] = block

    def hidden_size(self, model: nn.Module) -> int:
        """Width ``D`` of the hidden states entering a block."""
        raise BackboneError(f"adapter {self.name!r} does not define hidden_size()")

    def stream_dims(self, model: nn.Module) -> Tuple[int, ...]:
        """Width of every looped stream (default: one stream of ``hidden_size``)."""
        return (self.hidden_size(model),)

    def block_io(self, model: nn.Module) -> BlockIO:
        return BlockIO(tuple(self.streams))

    def input_modules(self, model: nn.Module) -> List[nn.Module]:
        """Input embedding modules frozen by ``freeze="half"``."""
        mods = [
            getattr(model, a)
            for a in self.input_attrs
            if isinstance(getattr(model, a, None), nn.Module)
        ]
        if not mods:
            raise BackboneError(
                f"{type(model).__name__} has none of the input modules {list(self.input_attrs)}; "
                "freeze='half' needs one (use freeze='full' or 'none')"
            )
        return mods

    def latent_channels(self, model: nn.Module) -> int:
        """Default input width of the ActionHead (the channels of the model's output)."""
        return 16

    def step_input(self, model: nn.Module) -> Tuple[str, int, Optional[int]]:
        """For ``scope="model"``: ``(name, channel_dim, channels)`` of the forward argument the
        model's output re-enters as (its output must have that argument's shape). The default
        refuses: the adapter does not know that the output lives in the input space."""
        raise BackboneError(
            f"graft_looped_blocks: scope='model' loops the whole model by feeding its output back as "
            f"its input, but {type(model).__name__}'s output does not live in its input space (adapter "
            f"{self.name!r} declares no step input; e.g. a classifier's logits are not an image). "
            "Use a span scope such as scope=(0, n_blocks) or scope='stack'")

    def latent_step_input(self, model: nn.Module, channel_dim: int, label: str) -> Tuple[str, int, Optional[int]]:
        """:meth:`step_input` of a latent diffusion transformer whose ``config`` has
        ``in_channels`` / ``out_channels``: the predicted latents re-enter as ``hidden_states``
        (channel axis ``channel_dim``) when the model predicts as many channels as it reads;
        otherwise :class:`BackboneError` (``label`` names the model in the message)."""
        c = model.config
        cin, cout = int(c.in_channels), int(c.out_channels or c.in_channels)
        if cin != cout:
            raise BackboneError(
                f"graft_looped_blocks: scope='model' feeds the output back as the input, but this "
                f"{label} reads {cin} latent channels and predicts {cout}, so its output cannot "
                "re-enter; use a span scope such as scope='stack'")
        return "hidden_states", channel_dim, cin

    # --- canvas --------------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> None:
        """Install attention that honours ``beta`` (sharpening) and canvas topologies; must
        leave the model's outputs unchanged. Called once by ``graft_looped_blocks``.  The base
        attaches the input checks of :meth:`input_guards`: an override calls it last.  It records
        where the canvas attention sits (a call once it was replaced refuses while sharpening acts on
        it) and keeps an installed topology's checks: preparing again (``graft_looped_blocks`` after
        ``install_topology``) must not drop the shape check of the tokens it was installed for."""
        from canvas_core.looping.sharpening_guard import record_sharpened_attention

        record_sharpened_attention(self, model)
        self.guard_inputs(model, self.installed_topology(model))

    def token_layout(
        self,
        model: nn.Module,
        sample_inputs: Optional[Mapping[str, Any]] = None,
        layout: Any = None,
    ) -> TokenLayout:
        """Map the tokens of a forward call with ``sample_inputs`` (the model's forward kwargs) to
        canvas positions. ``layout``: your own ``CanvasLayout`` on the same grid."""
        raise BackboneError(f"adapter {self.name!r} does not map tokens to canvas positions")

    @staticmethod
    def input_shape(sample_inputs: Any, key: str, ndim: int, what: str) -> Tuple[int, ...]:
        """Shape of ``sample_inputs[key]`` (a tensor or a tuple of ints) with ``ndim`` dims;
        ``CanvasTypeError`` / ``BackboneError`` naming the key and what it should be otherwise."""
        v = sample_inputs.get(key) if isinstance(sample_inputs, Mapping) else None
        if isinstance(v, torch.Tensor):
            shape = tuple(v.shape)
        elif isinstance(v, (tuple, list)) and all(isinstance(i, int) and not isinstance(i, bool) for i in v):
            shape = tuple(v)
            if any(i < 0 for i in shape):
                raise BackboneError(f"sample_inputs[{key!r}] = {shape} has a negative size; give the "
                                    f"shape of the {what} tensor")
        else:
            raise CanvasTypeError(
                f"token_layout needs sample_inputs[{key!r}]: the {what} tensor (or its shape)"
            )
        if len(shape) != ndim:
            raise BackboneError(
                f"sample_inputs[{key!r}] must have {ndim} dims ({what}), got shape {shape}"
            )
        return shape

    def video_text_tokens(self, model: nn.Module, frames: int, height: int, width: int, text_len: int,
                          *, text_first: bool, layout: Any = None) -> TokenLayout:
        """The token layout of a joint ``[text, video]`` (``text_first``) or ``[video, text]``
        attention sequence: canvas ``T = frames``, spatial ``(height + r, width)`` with
        ``r = ceil(text_len / width)`` extra rows; region ``video`` = the patch grid, region
        ``text`` = the extra rows (text token j at frame 0, row ``height + j // width``, column
        ``j % width``). ``layout``: the user's regions on the same grid."""
        from canvas_core.schema import CanvasLayout

        f, h, w, L = int(frames), int(height), int(width), int(text_len)
        r = max(1, math.ceil(L / w)) if L else 0
        regions = {"video": (0, f, 0, h, 0, w)}
        if L:
            regions["text"] = (0, 1, h, h + r, 0, w)
        base = CanvasLayout(T=f, spatial_shape=(h + r, w), d_model=self.hidden_size(model), regions=regions)
        plane = (h + r) * w
        video = (np.arange(f)[:, None, None] * plane + np.arange(h)[None, :, None] * w
                 + np.arange(w)[None, None, :]).reshape(-1)
        text = h * w + np.arange(L)
        order = (text, video) if text_first else (video, text)
        tl = TokenLayout(base, tuple(int(i) for i in np.concatenate(order)),
                         {"text_len": L, "frames": f, "height": h, "width": w, "text_rows": r})
        return tl.with_layout(layout) if layout is not None else tl

    def attention_targets(self, model: nn.Module) -> List[Any]:
        """Canvas attention objects (processors / attention modules), one per block, in order."""
        return []

    #: fn types that mean "the backbone's own attention" for this adapter (run by the plan's
    #: softmax kernel on the backbone's q/k/v, like ``cross_attention``)
    native_types: Tuple[str, ...] = ()

    def attention_shape(self, model: nn.Module) -> Tuple[int, int]:
        """``(n_heads, head_dim)`` of the blocks' attention."""
        c = getattr(model, "config", None)
        h, d = getattr(c, "num_attention_heads", None), getattr(c, "attention_head_dim", None)
        if isinstance(h, int) and isinstance(d, int):
            return h, d
        raise BackboneError(f"adapter {self.name!r} does not define attention_shape()")

    def module_tokens(self, model: nn.Module, tokens: "TokenLayout") -> Tuple[Any, int, str]:
        """Where a non-softmax type's module may run: ``(allowed, width, why)`` with ``allowed``
        a bool array over the tokens (None: all), ``width`` the hidden width the module sees, and
        ``why`` the reason the other tokens are excluded."""
        return None, self.hidden_size(model), ""

    def install_topology(self, model: nn.Module, topology: Any, tokens: TokenLayout, *,
                         kernel: Any = None, kernel_options: Optional[Mapping[str, Any]] = None,
                         requires_grad: bool = True) -> Any:
        """Make every block's attention follow ``topology`` over ``tokens``: the compiler's plan,
        restricted to the tokens, run by the kernel it resolved for the model's device on the
        backbone's own q/k/v; non-softmax types run their own module behind a zero-initialised
        gate.  Returns the :class:`~canvas_core.looping.installed.InstalledTopology` (its
        ``report()`` names the kernels).  Everything is checked before the model is changed.
        ``install_topology(model, None, ...)`` removes it (the backbone's attention again).
        ``requires_grad=False``: the model will only run inference, so kernels without a backward
        pass (e.g. ``kernel="flex_cpu"``) may be chosen; they refuse a call that needs gradients.
        Every call of the model is then checked by :meth:`input_guards` (``ShapeError`` for
        shapes the ``tokens`` were not built for)."""
        from canvas_core.looping.topology_install import (build_installation, no_attention_message,
                                                          recorded_installation, remove_installation)

        targets = self.attention_targets(model)
        # removing also works once the canvas attention holding the topology was replaced
        if not targets and (topology is not None or recorded_installation(model) is None):
            raise BackboneError(no_attention_message(self, model))
        n_blocks = len(self.blocks(model))
        rec = recorded_installation(model) if topology is not None else None
        if rec is not None and len(targets) < n_blocks and rec.replaced_attention():
            raise BackboneError(no_attention_message(self, model))
        if topology is not None and len(targets) < n_blocks:
            raise BackboneError(
                f"adapter {self.name!r} has canvas attention in only {len(targets)} of the "
                f"{n_blocks} blocks of {type(model).__name__} (the others use an attention it "
                "does not replace); a topology would apply to some blocks only, so it is refused"
            )
        if topology is None:
            remove_installation(self, model, targets)
            self.guard_inputs(model, None)
            return None
        if not isinstance(tokens, TokenLayout):
            raise CanvasTypeError(
                f"install_topology needs a TokenLayout from adapter.token_layout(...), got "
                f"{type(tokens).__name__}"
            )
        commit, installed = build_installation(self, model, topology, tokens, targets,
                                               kernel=kernel, kernel_options=kernel_options,
                                               requires_grad=requires_grad)
        remove_installation(self, model, targets)
        commit()
        self.guard_inputs(model, installed)
        return installed

    def input_guards(self, model: nn.Module, installed: bool) -> Sequence[Tuple[Optional[nn.Module], ReadFn]]:
        """Checks run on every call of the model's input modules (e.g. its patch embedding, which
        sees the input's shape before it becomes tokens): ``(module, read)`` pairs, one per
        module.  ``read(module, args, kwargs)`` is a module-level function returning the call's
        shapes (names of ``SHAPE_KEYS``) and raising a ``CanvasError`` itself for a call that
        cannot run.  ``installed=True``: the checks while a topology is installed (the shapes
        are compared with its token layout's, else ``ShapeError``); ``False``: those from
        :meth:`prepare` on while none is (only ``read``'s own refusals).  Default: none."""
        return ()

    def guard_inputs(self, model: nn.Module, installed: Any, *, prepared: bool = True) -> None:
        """Attach :meth:`input_guards` for ``installed`` (an ``InstalledTopology``; None: the
        checks of a prepared model without one, and its sharpening check, see
        ``looping/sharpening_guard.py``).  ``prepared=False`` removes every check.
        Adapters call it at the end of :meth:`prepare`; installing and removing a topology and
        :meth:`unprepare` call it."""
        from canvas_core.looping.sharpening_guard import SHARPENING_ATTR

        want = list(self.input_guards(model, installed is not None)) if prepared else []
        if not prepared:
            model.__dict__.pop(SHARPENING_ATTR, None)
        sharp = model.__dict__.get(SHARPENING_ATTR)
        if (installed is not None or sharp is not None) and all(m is not model for m, _ in want):
            want.append((model, _no_shapes))  # every call checks that the topology / sharpening still runs
        for module in [model, *(m for m, _ in [*self.input_guards(model, True), *self.input_guards(model, False)])]:
            guard_input_shapes(module, None)
        for module, read in want:
            guard_input_shapes(module, installed if installed is not None else
                               (sharp if module is model and sharp is not None else _NO_TOPOLOGY), read)

    def unprepare(self, model: nn.Module) -> None:
        """Undo :meth:`prepare` (``ungraft_looped_blocks`` calls it): the input checks are removed
        and each canvas attention gives way to the backbone's own (the generic undo of
        ``canvas_core.looping.ungraft``)."""
        from canvas_core.looping.ungraft import _generic_unprepare

        self.guard_inputs(model, None, prepared=False)
        _generic_unprepare(self.blocks(model))

    def installed_topology(self, model: nn.Module) -> Any:
        """The :class:`InstalledTopology` in ``model`` (None when no topology is installed; also
        one whose canvas attention was replaced since, which refuses calls until removed)."""
        from canvas_core.looping.topology_install import recorded_installation

        for t in self.attention_targets(model):
            bt = getattr(t, "canvas_topology", None)
            if bt is not None:
                return bt.shared
        return recorded_installation(model)

    def remove_topology(self, model: nn.Module) -> None:
        self.install_topology(model, None, None)


class GenericAdapter(BackboneAdapter):
    """Fallback for any model with a ``transformer_blocks`` or ``blocks`` block list whose
    blocks take the hidden states ``(B, N, D)`` first and return them (alone or first in a tuple).
    No topology installation; sharpening works where the blocks contain canvas-core attention."""

    name = "generic"
    candidate_attrs = ("transformer_blocks", "blocks", "layers")

    def __init__(self, block_attr: Optional[str] = None, hidden_size: Optional[int] = None) -> None:
        self._attr = block_attr
        self._hidden = hidden_size

    @property
    def block_attr(self) -> Optional[str]:  # type: ignore[override]
        return self._attr

    def step_input(self, model: nn.Module) -> Tuple[str, int, Optional[int]]:
        """The first argument of ``model.forward``, channels last; its shape is checked against the
        output's at the first forward."""
        import inspect

        try:
            params = list(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):
            params = []
        return (params[0] if params else "x"), -1, None

    @classmethod
    def find_attr(cls, model: nn.Module) -> Optional[str]:
        for a in cls.candidate_attrs:
            if isinstance(getattr(model, a, None), (nn.ModuleList, nn.Sequential)):
                return a
        return None

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return cls.find_attr(model) is not None

    def block_container(self, model: nn.Module) -> nn.Module:
        if self._attr is None:
            self._attr = self.find_attr(model)
        return super().block_container(model)

    def hidden_size(self, model: nn.Module) -> int:
        if self._hidden is not None:
            return self._hidden
        cfg = getattr(model, "config", None)
        for key in ("inner_dim", "hidden_size", "d_model", "embed_dim"):
            v = getattr(cfg, key, None) if cfg is not None else None
            v = v if v is not None else getattr(model, key, None)
            if isinstance(v, int):
                return v
        heads, hd = (
            getattr(cfg, "num_attention_heads", None),
            getattr(cfg, "attention_head_dim", None),
        )
        if isinstance(heads, int) and isinstance(hd, int):
            return heads * hd
        width = _canvas_width(model)
        if width is not None:
            return width
        raise BackboneError(
            f"cannot detect the hidden size of {type(model).__name__}; pass inner_dim= to "
            "graft_looped_blocks"
        )


def _canvas_width(model: nn.Module) -> Optional[int]:
    """The width of a model built from canvas parts: its own ``layout.d_model``, else the
    ``d_model`` of its first submodule that has one (a ``CanvasAttention``, a
    ``SpatiotemporalCanvas``, ...), else None."""
    layout = getattr(model, "layout", None)
    if isinstance(getattr(layout, "d_model", None), int):
        return layout.d_model
    for sub in model.modules():
        for owner in (sub, getattr(sub, "layout", None)):
            v = getattr(owner, "d_model", None)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
    return None

