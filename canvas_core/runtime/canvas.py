"""The spatiotemporal canvas tensor and its embeddings.

The canvas is a ``(T, *spatial_shape)`` grid of ``d_model`` vectors flattened to
``(B, N, d_model)`` in canonical order (``t * prod(spatial) + row-major(spatial)``).
Each position's representation is the sum of its content (an empty token or placed data), an
N-d sinusoidal positional encoding, and its region's identity: a learned modality embedding
(or semantic conditioning), the period embedding and, with a program, family + carrier
embeddings.
"""

from __future__ import annotations

import contextlib

from typing import Any, Dict, Iterable, Mapping, Tuple

import torch
from torch import nn

from canvas_core.errors import (CanvasTypeError, RegionError, SchemaError, ShapeError, UnknownRegionError,
                                 did_you_mean)
from canvas_core.runtime.semantic_conditioner import _NAMES_KEY, SemanticConditioner, check_state_region_names
from canvas_core.runtime.input_checks import allocating, check_allocation, check_count, check_width
from canvas_core.schema.staleness import check_unchanged, check_unchanged_traced, layout_stamp
from canvas_core.schema.limits import check_size
from canvas_core.runtime.embeddings import (
    FamilyCarrierEmbedding,
    PeriodEmbedding,
    SinusoidalPositionalEncoding3D,
    SinusoidalPositionalEncodingND,
    sinusoid_table,
)

__all__ = [
    "SinusoidalPositionalEncodingND",
    "SinusoidalPositionalEncoding3D",
    "PeriodEmbedding",
    "FamilyCarrierEmbedding",
    "SpatiotemporalCanvas",
    "sinusoid_table",
]


def _check_canvas_args(layout: Any, semantic_conditioner: Any, program: Any) -> None:
    """CanvasTypeError for a layout / conditioner / program of the wrong kind."""
    if not all(hasattr(layout, a) for a in ("d_model", "T", "spatial_shape", "regions", "region_indices")):
        raise CanvasTypeError(
            f"SpatiotemporalCanvas: layout must be a CanvasLayout, got {type(layout).__name__} "
            f"{layout!r:.80}; build one with CanvasLayout(...) or compile_schema(...).layout"
        )
    if semantic_conditioner is not None:
        names = getattr(semantic_conditioner, "region_names", None)
        if not callable(getattr(semantic_conditioner, "get_conditioning", None)) or isinstance(names, (str, bytes)) \
                or not isinstance(names, Iterable):
            raise CanvasTypeError(
                "SpatiotemporalCanvas: semantic_conditioner must have get_conditioning(region_name) and "
                "region_names (the regions it conditions; the others keep their modality embedding), e.g. a "
                f"SemanticConditioner, or be None; got {type(semantic_conditioner).__name__} "
                f"(region_names: {names!r:.60})")
        width = getattr(semantic_conditioner, "d_model", None)
        if isinstance(width, int) and width != layout.d_model:
            raise ShapeError(
                f"SpatiotemporalCanvas: semantic_conditioner has d_model={width}, the layout has "
                f"d_model={layout.d_model}; build the conditioner with d_model={layout.d_model}")
    if program is not None:
        regions = getattr(program, "regions", None)
        if not isinstance(regions, Mapping):
            raise CanvasTypeError(
                "SpatiotemporalCanvas: program must be a CanvasProgram (with a regions mapping) or "
                f"None, got {type(program).__name__} {program!r:.80}"
            )
        unknown = [n for n in regions if n not in layout.regions]
        if unknown:
            raise UnknownRegionError(
                f"SpatiotemporalCanvas: the program types region(s) {unknown} that the layout does "
                f"not declare ({list(layout.regions)}); pass the program compiled with this layout"
            )


#: key of the semantic conditioner's region names in the canvas's own ``_metadata`` entry
_CONDITIONER_NAMES = "conditioner_region_names"
#: key of ``{state key: region name}`` there, for canvases keeping some embeddings as ``r<k>``
_REGION_KEYS = "region_keys"


def _recorded_names(conditioner: Any) -> Any:
    """The region names a conditioner records in its saved state (a ``SemanticConditioner``'s),
    else None (no conditioner, or one of canvas-engineering's, whose states carry no names)."""
    return conditioner.region_names if isinstance(conditioner, SemanticConditioner) else None


class SpatiotemporalCanvas(nn.Module):
    """Creates, writes and reads the ``(B, N, d_model)`` canvas of a layout.

    Args:
        layout: a ``CanvasLayout``.
        semantic_conditioner: optional ``SemanticConditioner``; regions it knows
            (``region_names``) take ``get_conditioning(name)`` as their identity instead of a
            learned modality embedding (others get none).
        program: optional ``CanvasProgram``; adds family + carrier embeddings per region.

    ``create_empty(B)`` gives every position ``empty_token + PE + identity`` (uncovered
    positions: ``empty_token + PE + period_embedding(1)``).  ``place(canvas, x, region)``
    returns a new canvas whose region positions hold ``x + PE + identity(region)``
    (out-of-place, differentiable in both); ``extract(canvas, region)`` reads them back.
    ``identity = modality (or semantic) + period + family/carrier``.  Unlike
    canvas-engineering, placed data keeps its positional encoding.

    Example::

        sc = SpatiotemporalCanvas(layout)
        x = sc.create_empty(batch_size=4)                # (4, N, d_model)
        x = sc.place(x, frame_tokens, "visual")          # tokens + PE + identity at the region
        act = sc.extract(x, "action")                    # (4, region positions, d_model)
    """

    def __init__(self, layout: Any, semantic_conditioner: Any = None, program: Any = None) -> None:
        super().__init__()
        _check_canvas_args(layout, semantic_conditioner, program)
        check_width("SpatiotemporalCanvas", "layout.d_model", layout.d_model)
        check_size("positions", int(layout.num_positions), "SpatiotemporalCanvas positions of the layout")
        check_allocation("SpatiotemporalCanvas positional encoding", (layout.num_positions, layout.d_model))
        self.layout = layout
        # what the tables and indices below were built from: a later change of the layout, or
        # another layout object assigned to `self.layout`, is refused
        self._built_from = layout
        self._layout_stamp = layout_stamp(layout)
        self.semantic_conditioner = semantic_conditioner
        self.program = program
        D = self.d_model = int(layout.d_model)
        shape = tuple(layout.spatial_shape)
        self.names: Tuple[str, ...] = tuple(layout.regions)
        with allocating("SpatiotemporalCanvas positional tables", (layout.T + sum(shape), D)):
            self.pos_enc = SinusoidalPositionalEncodingND(
                D, max(1, layout.T), tuple(max(1, s) for s in shape)
            )
        self.empty_token = nn.Parameter(torch.randn(D) * 0.02)
        self.period_embedding = PeriodEmbedding(D)
        # with a semantic conditioner there are no learned modality embeddings: None, as in
        # canvas-engineering (no parameters either way, so the state dict is the same)
        self.modality_embeddings = None
        if semantic_conditioner is None:
            self.modality_embeddings = nn.ParameterDict(
                {f"r{k}": nn.Parameter(torch.randn(D) * 0.02) for k in range(len(self.names))})
        self.family_carrier = FamilyCarrierEmbedding(D) if program is not None else None
        # Regions whose RegionProgram declares an IdentitySpec get a slot binder, resolved
        # through the identity registry (canvas-plugin-identity); see bind_identities().
        self.identity_binders = None
        region_programs = getattr(program, "regions", None) or {}
        if any(getattr(rp, "identity", None) is not None for rp in region_programs.values()):
            from canvas_core.identity import build_identity_binders

            self.identity_binders = build_identity_binders(program, D)
        # saved in canvas-engineering's key layout (checkpoints move both ways): runtime/ce_state.py
        from canvas_core.runtime.ce_state import canvas_engineering_keys, public_load_keys

        self._register_state_dict_hook(canvas_engineering_keys)
        self.register_load_state_dict_post_hook(public_load_keys)  # errors name the saved keys
        self._slot: Dict[str, int] = {}
        for k, name in enumerate(self.names):
            self._slot[name] = k
            idx = torch.tensor(layout.region_indices(name), dtype=torch.long)
            self.register_buffer(f"index_{k}", idx, persistent=False)

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        # the conditioner's region names also go into the canvas's own metadata entry: inside a
        # larger model the canvas sees only that entry, and its tensors load before the conditioner's
        names = _recorded_names(self.semantic_conditioner)
        meta = getattr(destination, "_metadata", None)
        own = meta.get(prefix[:-1]) if isinstance(meta, dict) else None
        if names is not None and isinstance(own, dict):
            own[_CONDITIONER_NAMES] = names
        if isinstance(own, dict) and self.modality_embeddings is not None and self._keyed_by_index():
            own[_REGION_KEYS] = self._region_keys()  # which region each index-keyed entry is
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, checked first so that a refused state changes no tensor:
        a state whose semantic conditioner was of other regions (names recorded by
        ``state_dict()``) raises the conditioner's ``SchemaError``; one whose conditioner tensors
        do not fit (another number of regions, width ...) raises ``CanvasStateMismatch`` (a
        ``CheckpointError``, also a ``RuntimeError`` as torch's size mismatch is)."""
        check_state_region_names(self, state_dict)
        cond = self.semantic_conditioner
        misfit = cond.state_misfit(state_dict, "semantic_conditioner.", strict) \
            if isinstance(cond, SemanticConditioner) else ""
        if misfit:  # torch would copy the canvas's own tensors first, then raise
            from canvas_core.runtime.ce_state import CanvasStateMismatch

            raise CanvasStateMismatch(
                f"SpatiotemporalCanvas.load_state_dict: the state's semantic_conditioner does not fit this canvas's "
                f"({misfit}); build the conditioner with the same regions, embed_dim, projector_bias, "
                "freeze_embeddings and learn_residuals as the one that saved it. Nothing was loaded")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        saved = local_metadata.get(_CONDITIONER_NAMES) if isinstance(local_metadata, Mapping) else None
        if saved is not None and _recorded_names(self.semantic_conditioner) is not None:
            # refused here, before the canvas's own tensors load (the conditioner loads after them)
            self.semantic_conditioner._check_saved_names({_NAMES_KEY: saved}, f"{prefix}semantic_conditioner.")
        # canvas-engineering's layout of the same parameters: modality embeddings keyed by the
        # sanitized region name, `family_carrier_embedding.*`, and a stored `pos_enc.pe` table
        # (ours is computed; the formula is the same, so the stored copy is dropped once its shape
        # says it is of a canvas of this size)
        from canvas_core.runtime.ce_state import check_stored_table, rename_loaded_region_keys

        self._move_region_keys(state_dict, prefix, local_metadata)
        origin = rename_loaded_region_keys(self.names, state_dict, prefix)  # one-to-one, see ce_state.py
        for key in list(state_dict):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            if rest == "pos_enc.pe":
                check_stored_table(self, state_dict.pop(key))
            elif rest.startswith("family_carrier_embedding."):
                inner = prefix + "family_carrier." + rest[len("family_carrier_embedding."):]
                state_dict[inner] = state_dict.pop(key)
                origin[inner] = key
        # read by the post hook (ce_state.public_load_keys) to report keys by their saved names
        self.__dict__["_loaded_as"] = (prefix, origin)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _region_keys(self) -> Dict[str, str]:
        """``{modality-embedding key in state_dict(): region name}``."""
        from canvas_core.runtime.ce_state import region_state_keys

        return dict(zip(region_state_keys(self.names), self.names))

    def _keyed_by_index(self) -> bool:
        """Whether some region's embedding is saved as ``r<k>`` (two region names sanitize alike):
        such keys depend on the region order, which equal layouts may not share."""
        from canvas_core.runtime.ce_state import sanitized_region_key

        return any(key != sanitized_region_key(name) for key, name in self._region_keys().items())

    def _move_region_keys(self, state_dict: Dict[str, Any], prefix: str, local_metadata: Any) -> None:
        """Move each index-keyed modality embedding of ``state_dict`` to this canvas's key of the region
        it was saved for (recorded by ``state_dict()`` in the module's metadata), all at once."""
        saved = local_metadata.get(_REGION_KEYS) if isinstance(local_metadata, Mapping) else None
        if not isinstance(saved, Mapping) or self.modality_embeddings is None:
            return
        base, ours = f"{prefix}modality_embeddings.", {name: key for key, name in self._region_keys().items()}
        moves = {base + key: base + ours[name] for key, name in saved.items()
                 if name in ours and ours[name] != key and base + key in state_dict}
        if any(target in state_dict and target not in moves for target in moves.values()):
            return  # the targets are not a permutation of the saved keys: loaded as given, checked by torch
        values = {key: state_dict.pop(key) for key in moves}
        state_dict.update({moves[key]: value for key, value in values.items()})

    @property
    def family_carrier_embedding(self) -> Any:
        """The ``FamilyCarrierEmbedding`` (None without a program); canvas-engineering's name
        for :attr:`family_carrier`."""
        return self.family_carrier

    # ------------------------------------------------------------------ pieces
    def _k(self, region_name: str) -> int:
        k = self._slot.get(region_name) if isinstance(region_name, str) else None
        if k is None:
            raise UnknownRegionError(
                f"SpatiotemporalCanvas: unknown region {region_name!r}; the layout declares "
                f"{list(self.names)}." + did_you_mean(region_name, self.names)
            )
        return k

    def region_index(self, region_name: str) -> torch.Tensor:
        """Canonical flat indices ``(numel,)`` of a region (a buffer)."""
        return getattr(self, f"index_{self._k(region_name)}")

    def positional_encoding(self) -> torch.Tensor:
        """``(N, d_model)`` positional encoding in canonical order."""
        lay = self.layout
        return self.pos_enc(lay.T, tuple(lay.spatial_shape)).reshape(-1, self.d_model)

    def region_identity(self, region_name: str) -> torch.Tensor:
        """``(d_model,)``: modality (or semantic) + period (+ family/carrier with a program)."""
        k = self._k(region_name)
        self._check_layout()  # the period / family read below must be those the indices were built with
        return self._identity(region_name, k)

    def _identity(self, region_name: str, k: int) -> torch.Tensor:
        """:meth:`region_identity` after the layout check (made once by the caller)."""
        # the spec the layout checked; one replaced since (dict.__setitem__, seen by no O(1) check) is
        # checked and compared with the build eagerly, refused while compiling (without reading t_current)
        lay = self.layout
        spec = lay.regions.get(region_name)
        if spec is None or spec is not lay.__dict__.get("_specs", {}).get(region_name):
            if torch.compiler.is_compiling():
                raise SchemaError(
                    f"SpatiotemporalCanvas was built from this CanvasLayout before it was changed (region "
                    f"{region_name!r} was replaced; seen while torch.compile traced it), so the region indices it "
                    "holds are out of date; build the SpatiotemporalCanvas again from the changed layout")
            spec = lay.region_spec(region_name)  # names a bad or missing region, counts the change
            self._check_layout()  # accepted only when changed back to what this canvas was built from
        out = self.period_embedding(int(getattr(spec, "period", 1)))
        cond = self.semantic_conditioner
        if cond is None:
            out = out + self.modality_embeddings[f"r{k}"]
        elif region_name in list(getattr(cond, "region_names", [])):
            out = out + cond.get_conditioning(region_name).to(out)
        if self.family_carrier is not None:
            rp = getattr(self.program, "regions", {}).get(region_name)
            family = getattr(rp, "family", None) or getattr(spec, "family", None) or "state"
            carrier = getattr(rp, "carrier", None) or getattr(spec, "carrier", "deterministic")
            out = out + self.family_carrier(family, carrier)
        return out

    def region_embedding(self, region_name: str) -> torch.Tensor:
        """``(numel, d_model)``: what :meth:`place` adds to the data (PE + identity)."""
        idx = self.region_index(region_name)
        return self.positional_encoding().index_select(0, idx) + self.region_identity(region_name)

    # ------------------------------------------------------------------ API
    def create_empty(self, batch_size: int) -> torch.Tensor:
        """``(B, N, d_model)`` canvas of empty tokens + positional + region identity."""
        # checked eagerly only: under torch.compile a message holding the batch size would make
        # it a constant of the graph (one recompile per batch size, even with dynamic=True)
        checked = not torch.compiler.is_compiling()
        if checked:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
                raise CanvasTypeError(
                    "SpatiotemporalCanvas.create_empty: batch_size must be an int >= 0, "
                    f"got {batch_size!r}"
                )
            check_count("SpatiotemporalCanvas.create_empty", "batch_size", batch_size, minimum=0, limit="batch")
            check_allocation(f"SpatiotemporalCanvas.create_empty({batch_size})",
                             (batch_size, self.layout.num_positions, self.d_model))
        self._check_layout()
        base = self.positional_encoding() + self.empty_token
        N = base.shape[0]
        ident = self.period_embedding(1).expand(N, self.d_model)
        for k, name in enumerate(self.names):  # the layout was checked above, once
            idx = getattr(self, f"index_{k}")
            ident = ident.index_copy(0, idx, self._identity(name, k).expand(idx.numel(), self.d_model))
        guard = (allocating(f"SpatiotemporalCanvas.create_empty({batch_size})", (batch_size, N, self.d_model))
                 if checked else contextlib.nullcontext())
        with guard:
            return (base + ident).unsqueeze(0).expand(batch_size, N, self.d_model).clone()

    def _check_layout(self) -> None:
        """Refuse a layout changed since this canvas was built (its indices would be stale), also
        while torch.compile traces (then without reading t_current; see schema/staleness.py)."""
        stamp = self.__dict__.get("_layout_stamp")
        built = self.__dict__.get("_built_from", self.layout)  # absent in a canvas pickled before it existed
        if self.layout is not built:  # another layout's revision says nothing about these indices
            raise SchemaError(
                f"SpatiotemporalCanvas was built from another CanvasLayout than its .layout now "
                f"({type(self.layout).__name__} at {id(self.layout):#x} was assigned after the build), so the region "
                "indices it holds are out of date; build the SpatiotemporalCanvas again from that layout")
        if torch.compiler.is_compiling():
            check_unchanged_traced(self.layout, stamp, "SpatiotemporalCanvas")
        else:
            check_unchanged(self.layout, stamp, "SpatiotemporalCanvas")

    def _check_canvas(self, canvas: torch.Tensor, where: str) -> None:
        self._check_layout()
        N = self.layout.num_positions
        if (
            not isinstance(canvas, torch.Tensor)
            or canvas.dim() != 3
            or canvas.shape[1:] != (N, self.d_model)
        ):
            got = tuple(canvas.shape) if isinstance(canvas, torch.Tensor) else type(canvas).__name__
            raise ShapeError(
                f"SpatiotemporalCanvas.{where}: canvas must be (B, {N}, {self.d_model}), got {got}"
            )
        if not canvas.is_floating_point():
            raise ShapeError(
                f"SpatiotemporalCanvas.{where}: canvas must be a floating tensor, got {canvas.dtype}; "
                "build it with create_empty(batch_size)"
            )
        if canvas.device != self.empty_token.device:
            raise ShapeError(
                f"SpatiotemporalCanvas.{where}: canvas is on {canvas.device} but the module is on "
                f"{self.empty_token.device}; move one of them (module.to(canvas.device))"
            )

    def place(
        self, canvas: torch.Tensor, embeddings: torch.Tensor, region_name: str
    ) -> torch.Tensor:
        """New canvas with region ``region_name`` set to ``embeddings + PE + identity``.

        ``embeddings``: ``(B, numel, d_model)`` in the region's canonical order (t-major).
        """
        self._check_canvas(canvas, "place")
        idx = self.region_index(region_name)
        if isinstance(embeddings, torch.Tensor) and (
            not embeddings.is_floating_point() or embeddings.device != canvas.device
        ):
            raise ShapeError(
                f"SpatiotemporalCanvas.place: region {region_name!r} embeddings must be a floating "
                f"tensor on the canvas's device {canvas.device}, got {embeddings.dtype} on "
                f"{embeddings.device}; convert with embeddings.to(canvas)"
            )
        want = (canvas.shape[0], idx.numel(), self.d_model)
        if not isinstance(embeddings, torch.Tensor) or tuple(embeddings.shape) != want:
            got = (
                tuple(embeddings.shape)
                if isinstance(embeddings, torch.Tensor)
                else type(embeddings).__name__
            )
            raise ShapeError(
                f"SpatiotemporalCanvas.place: region {region_name!r} expects embeddings of "
                f"shape (B, numel, d_model) = {want}, got {got}"
            )
        values = embeddings + self.region_embedding(region_name).to(embeddings.dtype)
        return canvas.index_copy(1, idx, values.to(canvas.dtype))

    def bind_identities(self, canvas: torch.Tensor, states: Any = None):
        """Run every identity region's slot binder over its frames of ``canvas`` (time order).

        Args:
            canvas: ``(B, N, d_model)``.
            states: per region, the slot state to continue from (None = fresh slot bank).
        Returns:
            ``(slots, states)``: per identity region the ``(B, T_region, n_slots, d_model)`` slots
            and the state to pass to the next call (persistent / tracklet modes carry it).
        """
        if self.identity_binders is None:
            raise RegionError(
                "this canvas has no identity regions: give SpatiotemporalCanvas a program whose "
                "RegionProgram(identity=IdentitySpec(...)) is set for the regions to track")
        self._check_canvas(canvas, "bind_identities")
        return self.identity_binders.bind_canvas(canvas, self.layout, states)

    def extract(self, canvas: torch.Tensor, region_name: str) -> torch.Tensor:
        """``(B, numel, d_model)``: the region's positions in canonical order."""
        self._check_canvas(canvas, "extract")
        return canvas.index_select(1, self.region_index(region_name))
