"""Semantic conditioning: what each region *means*, as a frozen text embedding.

Pure Python at import: ``auto_semantic_type``, ``compute_semantic_embeddings``,
``program_distance`` and ``embed_schema`` never import torch themselves (a real embedder may);
``SemanticConditioner`` (an ``nn.Module``) lives in :mod:`canvas_core.runtime.semantic_conditioner`
and is handed out here lazily (:func:`canvas_core._lazy.lazy_exports`).

Embedders: a callable ``texts -> list[list[float]]``, an object with ``embed(texts)``, or the
name of an embedder registered through the ``canvas_register_embedders`` hook (e.g. ``"minilm"``
from ``canvas-plugin-semantic``, which runs offline on all-MiniLM-L6-v2).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, NoReturn, Optional, Sequence, Tuple

from canvas_core._lazy import lazy_exports
from canvas_core.errors import CanvasTypeError, SchemaError
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


def _number(x: Any) -> Optional[float]:
    """``float(x)`` for a real number (int, float, a numpy / 0-d torch scalar); None for anything
    else -- text above all, which ``float`` would otherwise read ("123", "nan")."""
    if x is None or isinstance(x, (str, bytes, bytearray)):
        return None
    try:
        return float(x)
    except (TypeError, ValueError, OverflowError):
        return None


def _source(embedder: Any, model: str) -> str:
    """How an error names the embedder: a registered one with its provider
    (``embedder 'minilm' from canvas-plugin-semantic 0.1.0``), any other by its model name."""
    if isinstance(embedder, str):
        from canvas_core.plugins import EMBEDDER_REGISTRY

        spec = EMBEDDER_REGISTRY.get(embedder)
        if spec is not None and hasattr(spec, "describe_provider"):
            return f"embedder {embedder!r} from {spec.describe_provider()}"
    return f"embedder {model!r}"


def _run_embedder(fn: Callable, texts: List[str], source: str) -> Any:
    """``fn(texts)``; an exception of the embedder's own code (a ``RecursionError`` included) is
    a :class:`~canvas_core.errors.FactoryError` naming ``source``, the cause chained, as a
    factory's failure is when the embedder is built."""
    try:
        return fn(list(texts))
    except Exception as exc:
        _raise_embedder_failure(exc, texts, source)


def _raise_embedder_failure(exc: Exception, texts: List[str], source: str) -> NoReturn:
    from canvas_core.errors import CanvasError, FactoryError, FactoryTypeError, FactoryValueError
    from canvas_core.plugins.hints import exc_text

    if isinstance(exc, CanvasError):
        raise exc
    cls = (FactoryTypeError if isinstance(exc, TypeError) else
           FactoryValueError if isinstance(exc, ValueError) else FactoryError)
    raise cls(f"{source} failed while embedding {len(texts)} texts: it raised {exc_text(exc, 300)}. "
              "Fix the embedder or report it to its author, or use another embedder") from exc


def _check_length(n: Optional[int], where: str, so_far: bool = False) -> None:
    """Refuse a vector of ``n`` values over ``CANVAS_MAX_WIDTH``: its length becomes the width
    (``embed_dim``) of the conditioner's projection.  Checked before the vector is converted."""
    from canvas_core.schema.limits import check_size

    if n is not None:
        check_size("width", n, f"{where}: the vector's length{' (counted so far)' if so_far else ''}",
                   fix="Use an embedder with shorter vectors (a text embedding has hundreds to a few "
                       "thousand values)")


def _row_length(v: Any) -> Optional[int]:
    """The number of values in ``v`` known without converting it (an array's or tensor's size,
    a list's length); None for an iterator."""
    shape = getattr(v, "shape", None)
    if shape is not None:
        try:
            return math.prod(int(d) for d in shape)
        except (TypeError, ValueError):
            return None
    try:
        return len(v)
    except TypeError:
        return None


def _vectors(fn: Callable, texts: List[str], model: str = "embedder",
             keys: Optional[List[str]] = None, source: Optional[str] = None,
             zeros_refused: bool = True) -> List[Tuple[float, ...]]:
    """One tuple of floats per text, or a SchemaError naming the embedder (``model``) and the
    region / path (``keys``: labels such as ``region 'a'``, parallel to ``texts``) whose vector
    is malformed, all zeros (a UserWarning instead when not ``zeros_refused``: the
    canvas-engineering form, whose callers' mock embedders return zeros) or over
    ``CANVAS_MAX_WIDTH`` values (a SizeLimitError, checked before converting it); a failure of
    the embedder itself is a FactoryError naming ``source`` (default: the model name)."""
    keys = [f"text {t!r}" for t in texts] if keys is None else keys
    who = f"embedder {model!r}"
    out = _run_embedder(fn, texts, source or who)
    shape = getattr(out, "shape", None)
    if hasattr(out, "tolist") and shape is not None:  # an array / tensor: its shape, then convert
        if len(shape) >= 1 and int(shape[0]) != len(texts):
            raise SchemaError(f"{who} returned {int(shape[0])} vectors for {len(texts)} texts; return one "
                              "vector per text")
        if len(shape) >= 2 and keys:
            _check_length(math.prod(int(d) for d in tuple(shape)[1:]), f"{who}, {keys[0]}")
        out = out.tolist()
    if out is None or isinstance(out, (str, bytes, bytearray)) or not isinstance(out, Iterable):
        raise SchemaError(f"{who} returned {type(out).__name__} {str(out)[:40]!r} for {len(texts)} texts "
                          f"({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}); an embedder "
                          "returns one vector (a list of floats) per text")
    try:  # a generator's rows are the embedder's code running: at most one more than needed
        out = list(out) if hasattr(out, "__len__") else list(itertools.islice(out, len(texts) + 1))
    except Exception as exc:
        _raise_embedder_failure(exc, texts, source or who)
    if len(out) != len(texts):
        raise SchemaError(f"{who} returned {len(out)} vectors for {len(texts)} texts; return one vector per text")
    vecs = [_vector(v, f"{who}, {key}" + (f" (text {t!r})" if not key.startswith("text ") else ""), zeros_refused)
            for key, t, v in zip(keys, texts, out)]
    if len({len(v) for v in vecs}) > 1:
        lengths = ", ".join(f"{k}: {len(v)}" for k, v in zip(keys, vecs))
        raise SchemaError(f"{who} returned vectors of different lengths ({lengths}); every vector must have "
                          "the same length")
    return vecs


def _vector(v: Any, where: str, zeros_refused: bool = True) -> Tuple[float, ...]:
    """One embedder row as a tuple of floats, its length checked before it is converted."""
    if not isinstance(v, (str, bytes, bytearray)):
        _check_length(_row_length(v), where)
    if hasattr(v, "tolist"):
        v = v.tolist()
    if v is None or isinstance(v, (str, bytes, bytearray)) or not isinstance(v, Iterable):
        raise SchemaError(f"{where}: the vector is {type(v).__name__} {str(v)[:40]!r}, not a sequence of "
                          "numbers; return a list of floats per text")
    vec = []
    for x in v:
        f = _number(x)
        if f is None:
            raise SchemaError(f"{where}: the vector holds {type(x).__name__} {str(x)[:40]!r}, not a number; "
                              "return a list of floats per text")
        vec.append(f)
        if len(vec) % 4096 == 0:  # an iterator of unknown length: stop soon after the limit
            _check_length(len(vec), where, so_far=True)
    if not vec or not all(math.isfinite(x) for x in vec):
        raise SchemaError(f"{where}: an empty or non-finite vector ({len(vec)} values); return at least one "
                          "finite float per text")
    if not any(vec):
        msg = (f"{where}: the vector is all zeros ({len(vec)} values); it has no direction, so "
               "the distance between regions (transfer_distance, cosine) is undefined for it. "
               "Return a non-zero vector per text (does the embedder fail quietly on this text?)")
        if zeros_refused:
            raise SchemaError(msg)
        warnings.warn(msg, UserWarning, stacklevel=4)
    return tuple(vec)


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
    odd = [(k, v) for k, v in types.items() if v is not None and not isinstance(v, str)]
    if odd:
        raise CanvasTypeError(f"compute_semantic_embeddings: semantic_types[{odd[0][0]!r}] must be the text to embed "
                              f"(a str), got {type(odd[0][1]).__name__} {odd[0][1]!r:.40}")
    paths = list(field_paths)
    if not paths:
        return {}
    fn, model = resolve_embedder(emb)
    texts = [types.get(p) or auto_semantic_type(p) for p in paths]
    # the canvas-engineering form keeps its behaviour for all-zero vectors (a warning, not an error)
    vecs = _vectors(fn, texts, model, [f"path {p!r}" for p in paths], _source(emb, model), zeros_refused=False)
    return dict(zip(paths, vecs))


def embed_schema(schema_or_layout: Any, embedder: Any) -> Any:
    """Copy of a schema / layout with every region's semantic fields filled.

    A region without ``semantic_type`` gets ``auto_semantic_type(region_name)``; all regions get
    ``semantic_embedding`` (tuple of floats) and ``embedding_model`` (the embedder's model name).

    Raises:
        FactoryError: the embedder itself raised (named with its provider; the cause chained).
        SchemaError: a vector that is not numbers, empty, non-finite or all zeros (naming the region).
        SizeLimitError: a vector longer than ``CANVAS_MAX_WIDTH``, refused before it is converted.
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
    vecs = _vectors(fn, texts, model, [f"region {n!r}" for n in names], _source(embedder, model)) if names else []
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

    Raises:
        CanvasTypeError: a spec that is not a ``RegionSpec``, or a program that is neither a
            ``RegionProgram`` nor None (a dict's keys would otherwise read as no family at all).
    """
    from canvas_core.program.specs import RegionProgram
    from canvas_core.schema.region import RegionSpec, transfer_distance

    for name, spec in (("a_spec", a_spec), ("b_spec", b_spec)):
        if not isinstance(spec, RegionSpec):
            raise CanvasTypeError(
                f"program_distance: {name} must be a RegionSpec, got {type(spec).__name__} {spec!r:.60}; the "
                "arguments are (a_spec, a_program, b_spec, b_program)")
    for name, prog in (("a_program", a_program), ("b_program", b_program)):
        if prog is not None and not isinstance(prog, RegionProgram):
            raise CanvasTypeError(
                f"program_distance: {name} must be a RegionProgram or None, got {type(prog).__name__} "
                f"{prog!r:.60}; build one (RegionProgram(family=..., carrier=...)) or pass None for no penalty")
    d = float(transfer_distance(a_spec, b_spec))
    if a_program is not None and b_program is not None:
        if getattr(a_program, "family", None) != getattr(b_program, "family", None):
            d += FAMILY_PENALTY
        if getattr(a_program, "carrier", None) != getattr(b_program, "carrier", None):
            d += CARRIER_PENALTY
    return max(d, 0.0)


__getattr__, __dir__ = lazy_exports(__name__, {
    # the nn.Module lives in the runtime (torch); canvas-engineering imported it from here
    "SemanticConditioner": "canvas_core.runtime.semantic_conditioner",
    # canvas_engineering.semantic imported CanvasLayout; keep that import path working
    "CanvasLayout": "canvas_core.schema",
}, globals())
