"""Semantic conditioning: what each region *means*, as a frozen text embedding.

Pure Python at import: ``auto_semantic_type``, ``compute_semantic_embeddings``,
``program_distance`` and ``embed_schema`` never import torch themselves (a real embedder may);
``SemanticConditioner`` (an ``nn.Module``) is built on first access via PEP 562 ``__getattr__``.

Embedders: a callable ``texts -> list[list[float]]``, an object with ``embed(texts)``, or the
name of an embedder registered through the ``canvas_register_embedders`` hook (e.g. ``"minilm"``
from ``canvas-plugin-semantic``, which runs offline on all-MiniLM-L6-v2).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from canvas_core.errors import CanvasTypeError, SchemaError, UnknownRegionError
from canvas_core.program.naming import auto_semantic_type  # defined in the program layer, which uses it

__all__ = [
    "SemanticConditioner", "auto_semantic_type", "compute_semantic_embeddings", "program_distance",
    "resolve_embedder", "embed_schema", "FAMILY_PENALTY", "CARRIER_PENALTY",
]

#: Added to the semantic distance when two regions' families differ (as in canvas-engineering).
FAMILY_PENALTY = 0.3
#: Added to the semantic distance when two regions' carriers differ (as in canvas-engineering).
CARRIER_PENALTY = 0.2




# --------------------------------------------------------------------------------- embedders
def resolve_embedder(embedder: Any) -> Tuple[Callable[[List[str]], List[List[float]]], str]:
    """``(embed_fn, model_name)`` for a registered name, an object with ``embed`` or a callable.

    The model name (stored as each region's ``embedding_model``) is, in order: the embedder's
    ``model_name`` attribute, the ``embedding_model=`` metadata of its registration, the
    registry name, the callable's ``__name__``.  Named embedders are created once per process
    and reused (loading a text model is the slow part).
    """
    name = None
    registered_model = None
    if isinstance(embedder, str):
        name = embedder
        embedder, registered_model = _named_embedder(name)
    fn = getattr(embedder, "embed", None)
    if not callable(fn):
        fn = embedder if callable(embedder) else None
    if fn is None:
        raise CanvasTypeError(
            f"embedder must be a registered embedder name, an object with embed(texts) or a callable "
            f"texts -> vectors; got {type(embedder).__name__}")
    model = (getattr(embedder, "model_name", None) or registered_model or name
             or getattr(embedder, "__name__", None) or type(embedder).__name__)
    return fn, str(model)


_NAMED: Dict[str, Tuple[Any, Optional[str]]] = {}


def _named_embedder(name: str) -> Tuple[Any, Optional[str]]:
    """Create (once) the embedder registered as ``name``; ``(instance, embedding_model metadata)``."""
    from canvas_core.plugins import EMBEDDER_REGISTRY, create_embedder

    spec = EMBEDDER_REGISTRY.get(name) if hasattr(EMBEDDER_REGISTRY, "get") else None
    key = f"{name}@{getattr(spec, 'provider', '')}:{getattr(spec, 'factory', '')}"
    if key not in _NAMED:
        instance = create_embedder(name)  # UnknownNameError / UnavailableError carry install hints
        meta = getattr(spec, "metadata", None) or {}
        _NAMED[key] = (instance, meta.get("embedding_model"))
    return _NAMED[key]


def _vectors(fn: Callable, texts: List[str]) -> List[Tuple[float, ...]]:
    out = fn(list(texts))
    if hasattr(out, "tolist"):
        out = out.tolist()
    out = list(out)
    if len(out) != len(texts):
        raise SchemaError(f"embedder returned {len(out)} vectors for {len(texts)} texts")
    vecs = []
    for t, v in zip(texts, out):
        if hasattr(v, "tolist"):
            v = v.tolist()
        vec = tuple(float(x) for x in v)
        if not vec or not all(math.isfinite(x) for x in vec):
            raise SchemaError(f"embedder returned an empty or non-finite vector for {t!r}")
        vecs.append(vec)
    if len({len(v) for v in vecs}) > 1:
        raise SchemaError("embedder returned vectors of different lengths")
    return vecs


def compute_semantic_embeddings(field_paths: Any, embed_fn: Any = None,
                                semantic_types: Optional[Dict[str, str]] = None, *,
                                embedder: Any = None) -> Any:
    """Compute semantic embeddings.

    Two forms:

    * ``compute_semantic_embeddings(field_paths, embed_fn, semantic_types=None)`` (canvas-engineering):
      returns ``{path: embedding tuple}``; each path is embedded as ``semantic_types[path]`` when
      given, else ``auto_semantic_type(path)``.
    * ``compute_semantic_embeddings(schema_or_layout, embedder=...)``: returns a *new*
      ``CanvasSchema`` / ``CanvasLayout`` whose regions all carry ``semantic_type`` (auto-derived
      from the region name when missing), ``semantic_embedding`` and ``embedding_model``
      (see :func:`embed_schema`).

    ``embed_fn`` / ``embedder``: callable ``texts -> vectors``, object with ``embed``, or a
    registered embedder name.
    """
    if embed_fn is not None and embedder is not None:
        raise CanvasTypeError("compute_semantic_embeddings: give embed_fn or embedder, not both")
    emb = embed_fn if embed_fn is not None else embedder
    if emb is None:
        raise CanvasTypeError("compute_semantic_embeddings needs an embedder (callable, object with embed, or name)")
    if not isinstance(field_paths, (str, Sequence)) and (hasattr(field_paths, "layout") or hasattr(field_paths, "regions")):
        return embed_schema(field_paths, emb)
    if isinstance(field_paths, str) or not isinstance(field_paths, Sequence):
        raise CanvasTypeError("compute_semantic_embeddings: field_paths must be a list of strings, a CanvasSchema or a CanvasLayout")
    if semantic_types is not None and not isinstance(semantic_types, Mapping):
        raise CanvasTypeError("compute_semantic_embeddings: semantic_types must be a dict path -> text")
    types = dict(semantic_types or {})
    paths = list(field_paths)
    if not paths:
        return {}
    fn, _ = resolve_embedder(emb)
    texts = [types.get(p) or auto_semantic_type(p) for p in paths]
    return dict(zip(paths, _vectors(fn, texts)))


def embed_schema(schema_or_layout: Any, embedder: Any) -> Any:
    """Copy of a schema / layout with every region's semantic fields filled.

    A region without ``semantic_type`` gets ``auto_semantic_type(region_name)``; all regions get
    ``semantic_embedding`` (tuple of floats) and ``embedding_model`` (the embedder's model name).
    """
    from canvas_core.schema import CanvasLayout, CanvasSchema

    is_schema = isinstance(schema_or_layout, CanvasSchema)
    if not is_schema and not isinstance(schema_or_layout, CanvasLayout):
        raise CanvasTypeError(
            f"embed_schema needs a CanvasSchema or CanvasLayout, got {type(schema_or_layout).__name__}; "
            "for a BoundSchema / CanvasProgram pass its .layout (or use its field_names with "
            "compute_semantic_embeddings(field_paths, embed_fn))")
    layout = schema_or_layout.layout if is_schema else schema_or_layout
    names = list(layout.regions)
    fn, model = resolve_embedder(embedder)
    specs = {n: layout.region_spec(n) for n in names}
    texts = [specs[n].semantic_type or auto_semantic_type(n) for n in names]
    vecs = _vectors(fn, texts) if names else []
    regions = dict(layout.regions)
    for n, t, v in zip(names, texts, vecs):
        regions[n] = dataclasses.replace(specs[n], semantic_type=t, semantic_embedding=v, embedding_model=model)
    new_layout = dataclasses.replace(layout, regions=regions)
    if not is_schema:
        return new_layout
    return dataclasses.replace(schema_or_layout, layout=new_layout)


# ------------------------------------------------------------------------------ distances
def program_distance(a_spec: Any, a_program: Any, b_spec: Any, b_program: Any) -> float:
    """Transfer distance with program penalties (>= 0, lower = more compatible).

    ``transfer_distance(a_spec, b_spec)`` (cosine distance in [0, 2]) plus
    :data:`FAMILY_PENALTY` when the families differ and :data:`CARRIER_PENALTY` when the carriers
    differ.  A missing program (None) adds no penalty for that region pair.
    """
    from canvas_core.schema.region import transfer_distance

    d = float(transfer_distance(a_spec, b_spec))
    if a_program is not None and b_program is not None:
        if getattr(a_program, "family", None) != getattr(b_program, "family", None):
            d += FAMILY_PENALTY
        if getattr(a_program, "carrier", None) != getattr(b_program, "carrier", None):
            d += CARRIER_PENALTY
    return max(d, 0.0)


# ---------------------------------------------------------------------- torch: conditioner
class _UnknownConditionedRegion(UnknownRegionError, KeyError):
    """Unknown region name; also a ``KeyError`` (what canvas-engineering raised)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _build_conditioner_class() -> type:
    import torch
    from torch import nn

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
            self._names = sorted(region_embeddings)
            rows = []
            for n in self._names:
                try:
                    v = torch.as_tensor(region_embeddings[n], dtype=torch.float32).reshape(-1)
                except (TypeError, ValueError, RuntimeError) as exc:
                    raise CanvasTypeError(
                        f"SemanticConditioner: embedding of region {n!r} must be a sequence or tensor of "
                        f"{embed_dim} numbers, got {type(region_embeddings[n]).__name__} ({exc})") from None
                if v.numel() != embed_dim:
                    raise SchemaError(f"SemanticConditioner: embedding of region {n!r} has {v.numel()} values, "
                                      f"expected embed_dim={embed_dim}")
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
            if region_name not in self._index:
                raise _UnknownConditionedRegion(
                    f"SemanticConditioner has no region {region_name!r}; known regions: {self._names}")
            return self.get_all_conditioning()[self._index[region_name]]

        def condition_canvas(self, canvas: "torch.Tensor", layout: Any) -> "torch.Tensor":
            """``(B, N, d_model) -> (B, N, d_model)``: adds each known region's vector to its
            positions (new tensor; regions not in this conditioner are unchanged)."""
            if canvas.dim() != 3 or canvas.shape[-1] != self.d_model:
                from canvas_core.errors import ShapeError

                raise ShapeError(f"condition_canvas: canvas must be (B, N, {self.d_model}), got {tuple(canvas.shape)}")
            n_pos = getattr(layout, "num_positions", None)
            if n_pos is not None and canvas.shape[1] != n_pos:
                from canvas_core.errors import ShapeError

                raise ShapeError(f"condition_canvas: canvas has {canvas.shape[1]} positions but the layout has "
                                 f"{n_pos} (T * prod(spatial_shape)); pass a canvas built from this layout")
            cond = self.get_all_conditioning().to(canvas.dtype)
            add = torch.zeros(canvas.shape[1], self.d_model, dtype=canvas.dtype, device=canvas.device)
            for name in layout.regions:
                if name in self._index:
                    idx = torch.as_tensor(layout.region_indices(name), dtype=torch.long, device=canvas.device)
                    add = add.index_add(0, idx, cond[self._index[name]].expand(idx.numel(), -1))
            return canvas + add.unsqueeze(0)

    SemanticConditioner.__module__ = __name__
    return SemanticConditioner


_LAZY: Dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name == "CanvasLayout":  # canvas_engineering.semantic imported it; keep that import path working
        from canvas_core.schema import CanvasLayout

        return CanvasLayout
    if name == "SemanticConditioner":
        if name not in _LAZY:
            _LAZY[name] = _build_conditioner_class()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
