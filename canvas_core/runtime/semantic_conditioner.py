"""`SemanticConditioner`: conditions canvas positions on their regions' semantic embeddings (torch).

The torch-free side of semantic conditioning (embedders, ``compute_semantic_embeddings``,
``program_distance``) is :mod:`canvas_core.semantic`, which also hands this class out under its
canvas-engineering path (``canvas_core.semantic.SemanticConditioner``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

import torch
from torch import nn

from canvas_core.errors import CanvasTypeError, SchemaError, ShapeError, UnknownRegionError

__all__ = ["SemanticConditioner", "check_state_region_names"]

#: key of the region names in the conditioner's ``state_dict()._metadata`` entry
_NAMES_KEY = "region_names"


def check_state_region_names(model: nn.Module, state_dict: Any) -> None:
    """Check every :class:`SemanticConditioner` inside ``model`` against the region names
    ``state_dict`` records for it, all before anything loads: ``nn.Module.load_state_dict``
    meets each conditioner only after it has loaded the modules before it.  Raises the
    conditioner's :class:`SchemaError`; a state without names passes."""
    meta = getattr(state_dict, "_metadata", None)
    if not isinstance(meta, Mapping):
        return
    for path, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, SemanticConditioner):
            module._check_saved_names(meta.get(path, {}), f"{path}." if path else "")


class _UnknownConditionedRegion(UnknownRegionError, KeyError):
    """Unknown region name; also a ``KeyError`` (what canvas-engineering raised)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SemanticConditioner(nn.Module):
    """Conditions canvas positions on their regions' semantic embeddings.

    ``cond(region) = W @ e_region + r_region`` with a shared projector ``W: embed_dim -> d_model``
    and zero-initialised learned residuals ``r`` (so training starts from the text geometry).

    Args:
        d_model: width of the canvas tokens the conditioning is added to.
        embed_dim: dimension of the semantic embeddings (e.g. 384 for MiniLM).
        region_embeddings: ``{region: vector}`` (tuple, list or tensor of ``embed_dim``).
        freeze_embeddings: raw embeddings as buffers (True) or parameters (False).
        learn_residuals: add zero-init learned residuals ``(n_regions, d_model)``.
        projector_bias: bias in the projection.
    """

    def __init__(self, d_model: int, embed_dim: int, region_embeddings: Dict[str, Any],
                 freeze_embeddings: bool = True, learn_residuals: bool = True,
                 projector_bias: bool = False):
        super().__init__()
        for what, v in (("d_model", d_model), ("embed_dim", embed_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SchemaError(f"SemanticConditioner: {what} must be an integer >= 1, got {v!r}")
        if not isinstance(region_embeddings, Mapping):
            raise CanvasTypeError("SemanticConditioner: region_embeddings must be a dict region name -> vector, "
                                  f"got {type(region_embeddings).__name__}")
        self.d_model, self.embed_dim = d_model, embed_dim
        odd = [k for k in region_embeddings if not isinstance(k, str)]
        if odd:
            raise CanvasTypeError(f"SemanticConditioner: region_embeddings keys must be region names (str), got "
                                  f"{odd[0]!r} ({type(odd[0]).__name__})")
        self._names = sorted(region_embeddings)
        rows = []
        for n in self._names:
            raw = region_embeddings[n]
            if (isinstance(raw, torch.Tensor) and raw.is_complex()) or isinstance(raw, complex) or \
                    getattr(getattr(raw, "dtype", None), "kind", None) == "c":
                raise CanvasTypeError(f"SemanticConditioner: embedding of region {n!r} is complex; give real numbers "
                                      "(the imaginary part would be dropped)")
            try:
                v = torch.as_tensor(raw, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise CanvasTypeError(
                    f"SemanticConditioner: embedding of region {n!r} must be a sequence or tensor of "
                    f"{embed_dim} numbers, got {type(region_embeddings[n]).__name__} ({exc})") from None
            if sum(size > 1 for size in v.shape) > 1:  # a (1, E) row is one vector; (2, 2) is not
                raise SchemaError(f"SemanticConditioner: embedding of region {n!r} has shape {tuple(v.shape)}; "
                                  f"give one flat vector of embed_dim={embed_dim} numbers (flatten it yourself if "
                                  "that is what you mean)")
            v = v.reshape(-1)
            if v.numel() != embed_dim:
                raise SchemaError(f"SemanticConditioner: embedding of region {n!r} has {v.numel()} values, "
                                  f"expected embed_dim={embed_dim}")
            if v.device.type != "meta" and not bool(torch.isfinite(v).all()):  # meta: shapes only
                raise SchemaError(f"SemanticConditioner: embedding of region {n!r} holds NaN or infinite values "
                                  "(a failed embedding?); they would spread into every position of the region")
            rows.append(v)
        table = torch.stack(rows) if rows else torch.zeros(0, embed_dim)  # (R, E)
        # attribute names match canvas-engineering so state_dicts load across both
        if freeze_embeddings:
            self.register_buffer("_embeddings", table)
        else:
            self._embeddings = nn.Parameter(table)
        self.projector = nn.Linear(embed_dim, d_model, bias=projector_bias)
        self.residuals = nn.Parameter(torch.zeros(len(self._names), d_model)) if learn_residuals else None
        self._index = {n: i for i, n in enumerate(self._names)}

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        # the row names go into the state's metadata, not into a tensor key: canvas-engineering
        # states (no names) still load here, and ours still load there
        meta = getattr(destination, "_metadata", None)
        if meta is not None and prefix[:-1] in meta:
            meta[prefix[:-1]][_NAMES_KEY] = list(self._names)
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _check_saved_names(self, local_metadata: Any, prefix: str) -> None:
        """Refuse a state saved by a conditioner of other regions: its rows would load under the
        wrong names (rows are ordered by name, so only the set of names matters)."""
        saved = local_metadata.get(_NAMES_KEY) if isinstance(local_metadata, Mapping) else None
        if saved is None or list(saved) == self._names:
            return
        gone, new = sorted(set(saved) - set(self._names)), sorted(set(self._names) - set(saved))
        raise SchemaError(
            f"SemanticConditioner.load_state_dict: the state {prefix[:-1] or '(top level)'!r} was saved by a "
            f"conditioner of the regions {list(saved)}, this one has {self._names} (only in the state: {gone}; "
            f"only here: {new}); its rows would condition the wrong regions. Build the conditioner with the "
            f"saved regions, or, to map the rows yourself, load a plain copy without the names "
            f"(load_state_dict(dict(state))). Nothing of the conditioner was loaded")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        self._check_saved_names(local_metadata, prefix)  # also when it loads inside a canvas model
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, checked first: a state that does not fit (another
        ``projector_bias``, ``learn_residuals``, number of regions or width, or, for a state
        that carries them, other region names) raises :class:`SchemaError` naming the fix, and
        the conditioner is left as it was (torch copies the fitting tensors before it reports
        the others)."""
        check_state_region_names(self, state_dict)
        misfit = self.state_misfit(state_dict, strict=strict)
        if misfit:
            raise SchemaError(
                f"SemanticConditioner.load_state_dict: the state does not fit this conditioner ({misfit}); "
                "build it with the same regions, embed_dim, d_model, projector_bias, freeze_embeddings and "
                "learn_residuals as the conditioner that saved it. Nothing was loaded")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def state_misfit(self, state_dict: Mapping[str, Any], prefix: str = "", strict: bool = True) -> str:
        """What keeps the entries of ``state_dict`` under ``prefix`` (this conditioner's part of a
        larger state) from loading here: missing and unexpected names (with ``strict``) and other
        shapes, as one text; ``""`` when they fit."""
        state = {k[len(prefix):]: v for k, v in state_dict.items() if isinstance(k, str) and k.startswith(prefix)}
        own = self.state_dict()
        missing = sorted(set(own) - set(state)) if strict else []
        unexpected = sorted(set(state) - set(own)) if strict else []
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
        return "; ".join(f"{what}: {', '.join(items)}" for what, items in
                         (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes)) if items)

    @property
    def n_regions(self) -> int:
        return len(self._names)

    @property
    def region_names(self) -> List[str]:
        return list(self._names)

    def __repr__(self) -> str:  # canvas-engineering's text
        frozen = not isinstance(self._embeddings, nn.Parameter)
        return (f"SemanticConditioner(d_model={self.d_model}, embed_dim={self.embed_dim}, "
                f"n_regions={self.n_regions}, frozen={frozen}, residuals={self.residuals is not None})")

    def get_all_conditioning(self) -> "torch.Tensor":
        """``(n_regions, d_model)``, rows ordered by sorted region name."""
        out = self.projector(self._embeddings)
        return out + self.residuals if self.residuals is not None else out

    def get_conditioning(self, region_name: str) -> "torch.Tensor":
        """``(d_model,)`` conditioning vector of one region."""
        try:
            hash(region_name)
        except TypeError:  # an unknown hashable name stays a KeyError, as in canvas-engineering
            raise CanvasTypeError(f"SemanticConditioner.get_conditioning: region_name must be a region name "
                                  f"(str), got {type(region_name).__name__} {region_name!r:.60}; known regions: "
                                  f"{self._names}") from None
        if region_name not in self._index:
            raise _UnknownConditionedRegion(
                f"SemanticConditioner has no region {region_name!r}; known regions: {self._names}")
        return self.get_all_conditioning()[self._index[region_name]]

    def condition_canvas(self, canvas: "torch.Tensor", layout: Any) -> "torch.Tensor":
        """``(B, N, d_model) -> (B, N, d_model)``: adds each known region's vector to its
        positions (new tensor; regions not in this conditioner are unchanged)."""
        if not isinstance(canvas, torch.Tensor):
            raise CanvasTypeError(f"condition_canvas: canvas must be a (B, N, {self.d_model}) tensor, got "
                                  f"{type(canvas).__name__}")
        if not all(hasattr(layout, a) for a in ("regions", "region_indices")):
            raise CanvasTypeError(f"condition_canvas: layout must be the CanvasLayout the canvas was built from, "
                                  f"got {type(layout).__name__} {layout!r:.60}")
        if canvas.dim() != 3 or canvas.shape[-1] != self.d_model:
                        raise ShapeError(f"condition_canvas: canvas must be (B, N, {self.d_model}), got {tuple(canvas.shape)}")
        if not (canvas.is_floating_point() or canvas.is_complex()):
            raise CanvasTypeError(f"condition_canvas: canvas must be a floating tensor, got {canvas.dtype} (the "
                                  "conditioning would be truncated to integers); pass canvas.float()")
        n_pos = getattr(layout, "num_positions", None)
        if n_pos is not None and canvas.shape[1] != n_pos:
                        raise ShapeError(f"condition_canvas: canvas has {canvas.shape[1]} positions but the layout has "
                             f"{n_pos} (T * prod(spatial_shape)); pass a canvas built from this layout")
        own = self.projector.weight.device
        if canvas.device != own:
            raise ShapeError(f"condition_canvas: the canvas is on {canvas.device} but the conditioner is on {own}; "
                             f"move the conditioner with .to({str(canvas.device)!r}) (or the canvas to {str(own)!r})")
        cond = self.get_all_conditioning().to(canvas.dtype)
        add = torch.zeros(canvas.shape[1], self.d_model, dtype=canvas.dtype, device=canvas.device)
        for name in layout.regions:
            if name in self._index:
                idx = torch.as_tensor(layout.region_indices(name), dtype=torch.long, device=canvas.device)
                add = add.index_add(0, idx, cond[self._index[name]].expand(idx.numel(), -1))
        return canvas + add.unsqueeze(0)
