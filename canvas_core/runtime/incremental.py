"""Frame-by-frame rollout of a canvas model: ``with incremental(model, layout) as roll: y = roll.step(x_t)``.

A world model is used by rolling it forward: write frame ``t`` into the canvas, read the model's
output at frame ``t``, build frame ``t + 1`` from it, and so on.  When no connection lets a
position read a later canvas frame (a *causal* topology), the positions of earlier frames do not
change when a frame is added, so each step only has to compute the new frame.

Inside ``with incremental(model, layout) as roll`` every ``CanvasAttention`` of ``model`` (an
``AttentionDispatcher`` too) runs one frame at a time and keeps what later frames read (its
inputs, and projected keys/values for softmax-family types); everything else in the model runs
unchanged on ``(B, V, D)``, so position-wise modules (norms, MLPs, heads, residual adds) work as
written.  ``roll.step(x_t)`` takes the ``V`` positions of the next frame, ``(B, V, D)`` in
canonical order (canonical positions ``t V ... (t + 1) V - 1``: the frame's grid row-major,
whatever region a position belongs to; ``layout.spatial_shape`` flattened), and returns
``model(x)[:, t V:(t + 1) V]`` for any canvas ``x`` that holds the frames stepped so far.
Outside ``roll.step`` the model still runs on whole canvases as usual.

Beyond ``T`` frames the canvas is full.  ``slide=None`` (the default) refuses the step;
``slide="recompute"`` moves the window by one frame: the canvas becomes the last ``T - 1`` frames
given plus the new one, and ``roll.step`` runs the model once on that whole window (one full
forward per step from then on) and returns ``model(window)[:, last frame]`` (of every tensor, when
the model returns a tuple, list or dict of ``(B, N, ...)`` tensors).

Bad input is refused with a :class:`~canvas_core.errors.CanvasError` before anything runs (a
non-causal topology names its connection; a step's shape names the expected one), and a step
that fails leaves the cache as it was.  On exit the model is exactly as before.

The cache holds the keys, values and inputs computed with the parameters the model had when
those frames were stepped.  After changing the parameters in the middle of an episode (an
optimizer step, ``load_state_dict``, ``.to()``) call ``roll.reset()``: later steps would read
the old frames' cached values and match neither model's full forward.  Nothing checks this per
step (a check would cost every step and misfire on modules that write their parameters in place);
``check=`` names the parameters written since the episode began when a step differs.

A rollout belongs to its model: a copy of the model taken inside the ``with`` (``copy.deepcopy``,
an EMA ``AveragedModel``, ``torch.save``) comes out as a plain model, and the ``Rollout`` itself
cannot be copied or pickled.  ``roll.step(x).backward()`` at every step needs ``roll.detach()``
after each backward (truncated backpropagation through time) or ``retain_graph=True``.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from canvas_core.errors import CanvasError, CanvasTypeError, ShapeError
from canvas_core.runtime.func_transforms import in_backward  # noqa: F401  (telemetry imports it from here)
from canvas_core.runtime.input_checks import check_tensor
from canvas_core.runtime.layer_observers import STEP_OBSERVERS, keep_out_of_copies
from canvas_core.runtime.layer_observers import observe_steps  # noqa: F401  (published here)
from canvas_core.runtime.layer_observers import observers as step_observers
from canvas_core.runtime.rollout_layer import (LayerRoll, _Index, check_tolerance, check_width, default_tolerance,
                                               input_hint, layer_frame_plan, step_difference)
from canvas_core.runtime.rollout_context import changed_parameters, eager as _eager, measuring as _measuring
from canvas_core.runtime.rollout_context import frames_measured, parameter_versions, step_attempt
from canvas_core.runtime.rollout_context import same_grid as _same_grid, wraps as _wraps
from canvas_core.runtime.rollout_plan import check_layer_layout, check_rollout_layer, frame_size

__all__ = ["incremental", "Rollout", "RolloutError", "SLIDE_STRATEGIES", "observe_steps", "frames_measured"]

#: what ``slide=`` accepts: None (refuse a step past ``T`` frames) or ``"recompute"``
SLIDE_STRATEGIES = (None, "recompute")


class RolloutError(CanvasError, ValueError):
    """A rollout cannot take this step (window full, layer called in an unsupported way)."""


def _refuse_sequence_parallel(model: nn.Module) -> None:
    """A rollout steps the model one frame at a time on each rank, while a sequence-parallel layer
    takes its rank's share of the canvas (same length as a frame, or not): refuse, before anything runs."""
    from canvas_core.runtime.sequence_parallel import listed, parallel_layer_names

    names = parallel_layer_names(model.named_modules())
    if names:
        raise RolloutError(
            f"incremental(): layer(s) {listed(names)} of "
            f"{type(model).__name__} run sequence-parallel (SequenceParallelCanvasAttention, from "
            "parallelize_canvas): each takes its rank's share of the whole canvas, not one frame, so a rollout "
            "step would compute the wrong positions. Roll out a plain copy instead, on one rank: "
            "save_canvas_checkpoint(model, path, schema), load_canvas_checkpoint(plain_model, path, schema) "
            "into a model built without parallelize_canvas, then incremental(plain_model, layout)")


class _LayerState:
    """One canvas layer in a rollout: its frame plan, torch indices and one cache per call."""

    def __init__(self, name: str, layer: Any) -> None:
        self.name, self.layer = name, layer
        self.frames = layer_frame_plan(layer)
        self.index: Optional[_Index] = None
        self.caches: List[LayerRoll] = []
        self.calls = 0  # calls in the current step


class Rollout:
    """The object ``incremental(...)`` yields; see the module docstring.

    Attributes:
        frame: frames in the current window (0 before the first step, at most ``T``).
        steps: steps taken in all (grows past ``T`` with ``slide="recompute"``).
    """

    def __init__(self, model: nn.Module, layout: Any, slide: Optional[str] = None,
                 width: Optional[int] = None, check: Union[bool, float] = False) -> None:
        from canvas_core.runtime.canvas_attention import CanvasAttention

        if not isinstance(model, nn.Module):
            raise CanvasTypeError(f"incremental(model, layout): model must be a torch nn.Module, got "
                                  f"{type(model).__name__}")
        if not hasattr(layout, "T") or not hasattr(layout, "spatial_shape"):
            raise CanvasTypeError(f"incremental(model, layout): layout must be a CanvasLayout, got "
                                  f"{type(layout).__name__}")
        # a string compared with the choices (``in`` on an array or tensor compares elementwise)
        if slide is not None and not (isinstance(slide, str) and slide in SLIDE_STRATEGIES):
            raise CanvasTypeError(f"incremental(slide={slide!r}): choose one of {list(SLIDE_STRATEGIES)}")
        self.model, self.layout, self.slide = model, layout, (None if slide is None else str(slide))
        self.check_tol = check_tolerance(check)
        self.check_explicit = check is not True  # check=True: 1e-4, or the output dtype's resolution
        self.T = int(layout.T)
        self.width = check_width(width, layout)
        _refuse_sequence_parallel(model)
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, CanvasAttention)]
        if not layers:
            raise CanvasTypeError(f"incremental(): {type(model).__name__} holds no CanvasAttention layer; "
                                  "a rollout runs canvas layers one frame at a time")
        for name, layer in layers:
            what = f"layer {name or '<model>'!r}: "
            if not _same_grid(layout, layer.plan.layout):
                pl = layer.plan.layout
                raise ShapeError(f"{what}its plan is laid out on T={pl.T}, spatial_shape="
                                 f"{tuple(pl.spatial_shape)}, the rollout's layout on T={layout.T}, "
                                 f"spatial_shape={tuple(layout.spatial_shape)}; pass the layout the "
                                 "model was built with")
            if getattr(layer, "residual_accumulator", None) is not None:
                raise RolloutError(f"{what}an AttentionDispatcher with a residual_accumulator sums "
                                   "over whole regions and cannot run frame by frame; build it "
                                   "without one for rollouts")
            check_rollout_layer(layer, what)
        self.V = frame_size(layers[0][1].plan)
        self._states = [_LayerState(n, m) for n, m in layers]
        # looped span / model parts of a grafted model (canvas_core.looping; duck-typed: no import
        # of the layer above): their adaptive exit is checked at every step
        self._loops = [(n or "<model>", m) for n, m in model.named_modules()
                       if hasattr(m, "loop_scope") and hasattr(m, "exit_tol")]
        # parts that recompute their activations in backward (looped blocks and spans): a
        # recomputation runs outside the step, which it could not replay, so steps keep theirs
        self._checkpointing = [m for m in model.modules()
                               if isinstance(getattr(m, "use_gradient_checkpointing", None), bool)]
        # the step inputs of the window (kept for slide="recompute" and for check=)
        self._inputs: List[torch.Tensor] = []
        self._sig: Optional[Tuple[int, Any, Any]] = None  # batch, dtype, device of the first step
        self.frame = 0
        self.steps = 0
        self._active = False
        self._stepping = False
        self._t = 0  # frame being computed
        self._kept: List[Any] = []  # handles that keep the step functions out of the layers' copies
        self._versions: Optional[dict] = None  # check=: the parameters' fingerprint at frame 0

    # --- a rollout is not copied ------------------------------------------------------------------
    def _refuse_copy(self, *_args: Any) -> Any:
        raise RolloutError(
            "a Rollout cannot be copied or saved (copy.copy, copy.deepcopy, pickle, torch.save): it is the "
            "state of stepping one model object, whose layers it has taken over. Make a new "
            "canvas_core.incremental(model_copy, layout) for a copy of the model, and save the model with "
            "model.state_dict() (or save_canvas_checkpoint)")

    __copy__ = __deepcopy__ = __reduce_ex__ = __reduce__ = __getstate__ = _refuse_copy

    # --- context manager ------------------------------------------------------------------------
    def __enter__(self) -> "Rollout":
        for st in self._states:
            if "_updates" in st.layer.__dict__:
                raise RolloutError(f"layer {st.name!r} already runs in a rollout; nest no rollouts "
                                   "on one model")
        for st in self._states:
            st.layer._updates = self._updates_of(st)
            self._kept.append(keep_out_of_copies(st.layer, attrs=("_updates",)))  # copies: plain layers
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        for kept in self._kept:
            kept.remove()
        self._kept = []
        for st in self._states:
            st.layer.__dict__.pop("_updates", None)
            st.caches = []
        self.reset()
        self._active = False

    def prepare(self) -> "Rollout":
        """Build every frame's index sets now (otherwise each frame builds its own on first use,
        so the first episode's steps take longer than later ones).  Returns ``self``."""
        for st in self._states:
            fp = st.frames
            for t in range(self.T):
                for f in fp.softmax_fns:
                    sf = fp.soft(f, t)
                    if sf is not None:
                        sf.classes()
                for f in fp.other:
                    fp.calls(f, t)
        return self

    def reset(self) -> None:
        """Forget every frame: the next step is frame 0 of a fresh canvas.  The cache buffers stay
        allocated for the next episode (slots past the frame count are never read)."""
        self._inputs = []
        self.frame = 0
        self._sig = None

    def detach(self) -> "Rollout":
        """Cut the frames stepped so far out of the autograd graph (truncated backpropagation through
        time): later steps read their cached inputs, keys and values, and send no gradient into
        them.  Call it after ``backward()`` of a step's loss to backward the next step's loss on its
        own (without it, that backward reaches the freed graph of the earlier steps).  Returns ``self``."""
        for st in self._states:
            for roll in st.caches:
                roll.h = roll.h.detach()
                if roll.kv is not None:
                    roll.kv = (roll.kv[0].detach(), roll.kv[1].detach())
        self._inputs = [x.detach() for x in self._inputs]
        return self

    # --- stepping ---------------------------------------------------------------------------------
    def _check(self, x: Any) -> None:
        if not isinstance(x, torch.Tensor):
            raise CanvasTypeError(f"roll.step(x_t): x_t must be a tensor (B, {self.V}, {self.width}), "
                                  f"got {type(x).__name__}")
        if x.dim() != 3 or x.shape[1] != self.V or x.shape[2] != self.width:
            raise ShapeError(f"roll.step(x_t): x_t must have shape (B, V, D) = (B, {self.V}, {self.width}) "
                             f"(the {self.V} positions of one frame of spatial_shape "
                             f"{tuple(self.layout.spatial_shape)}, width {self.width}), got {tuple(x.shape)}"
                             + (f"; a model whose input is {x.shape[2]} wide rolls out with incremental(..., "
                                f"width={x.shape[2]})" if x.dim() == 3 and x.shape[1] == self.V else ""))
        if self._sig is not None and (x.shape[0], x.dtype, x.device) != self._sig:
            raise ShapeError(f"roll.step(x_t): earlier steps had batch {self._sig[0]}, dtype {self._sig[1]} "
                             f"on {self._sig[2]}; got batch {x.shape[0]}, dtype {x.dtype} on {x.device}. "
                             "Call roll.reset() to start a new rollout with other inputs")

    def step(self, x_t: torch.Tensor) -> Any:
        """Write frame ``x_t`` ``(B, V, D)`` and return the model's output at that frame.  A step
        that raises changes nothing (observers such as telemetry take back what they measured)."""
        if not self._active:
            raise RolloutError("roll.step() runs inside `with canvas_core.incremental(model, layout) as roll:`")
        self._check(x_t)
        with step_attempt():
            return self._step(x_t)

    def _step(self, x_t: torch.Tensor) -> Any:
        if self.frame >= self.T:
            if self.slide is None:
                raise RolloutError(
                    f"roll.step(): the canvas holds T={self.T} frames and all are written; pass "
                    "incremental(..., slide='recompute') to slide the window by one frame per step "
                    "(recomputed from the last T-1 inputs), or call roll.reset() to start again")
            return self._slide(x_t)
        self._check_no_adaptive_exit()
        if self.check_tol is not None and self.frame == 0:
            self._versions = parameter_versions(self.model)
        y = self._run(x_t, self.frame)
        if self.check_tol is not None:
            self._compare_with_full_forward(x_t, y)
        self.frame += 1
        self.steps += 1
        if self.slide is not None or self.check_tol is not None:
            self._inputs.append(x_t.clone())  # a copy: callers refill one buffer frame after frame
        self._sig = (x_t.shape[0], x_t.dtype, x_t.device)
        return y

    def _compare_with_full_forward(self, x_t: torch.Tensor, y: Any) -> None:
        """``check=``: the step's output against ``model(canvas)[:, this frame]``, the canvas
        holding the frames stepped so far and zeros after them; a difference raises."""
        t, V = self.frame, self.V  # self._inputs: frames 0 .. t - 1 (no slide has happened yet)
        canvas = torch.cat(self._inputs + [x_t, x_t.new_zeros(x_t.shape[0], (self.T - t - 1) * V, x_t.shape[2])], dim=1)
        # a check, not output: telemetry leaves it out; eager as the steps are (compiled code would
        # trace the observers a recording adds, which fullgraph=True refuses)
        with torch.no_grad(), _measuring((0, 0)), _eager():
            full = self.model(canvas)  # not stepping: the layers run on the whole canvas
        ref_leaves, ref_spec = tree_flatten(_frame_of(full, t, V, self.T, "check="))
        leaves, spec = tree_flatten(y)
        if spec != ref_spec:
            raise RolloutError(f"incremental(check=...): the step returned a {type(y).__name__} of {len(leaves)} "
                               f"value(s), the full forward a {type(full).__name__} of {len(ref_leaves)}; the "
                               "model's output must have the same structure on one frame as on the canvas")
        for a, b in zip(leaves, ref_leaves):
            if not isinstance(b, torch.Tensor):
                continue
            diff, scale = step_difference(a.detach() if isinstance(a, torch.Tensor) else a, b.detach())
            tol = self.check_tol if self.check_explicit else default_tolerance(b.dtype)
            if not diff <= tol * scale:  # NaN or inf where the full forward has none fails too
                hint, cause = self._changed_hint(t), (
                    "a module outside the canvas layers mixes positions (x - x.mean(1), cumsum over positions, a "
                    "table over all N positions): it sees one frame in a step and the whole canvas in a full "
                    "forward; keep such modules outside the model, or roll out with slide='recompute' from the "
                    "start. Dropout in training mode differs too: model.eval()")
                raise RolloutError(
                    f"incremental(check=...): frame {t} of the rollout differs from the full forward by "
                    f"{diff:.3g} (tolerance {tol:g} x {scale:.3g}). "
                    + (f"{hint} Otherwise {cause}" if hint else cause[0].upper() + cause[1:]))

    def _changed_hint(self, t: int) -> str:
        """The likeliest cause of a difference, when it applies: parameters written mid-episode."""
        changed = changed_parameters(self.model, self._versions) if t > 0 else []
        if not changed:
            return ""
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return (f"Parameter(s) {', '.join(changed[:3])}{more} of {type(self.model).__name__} changed since "
                "frame 0 of this episode (an optimizer step, load_state_dict, .to(), an in-place write): the "
                "cache holds the earlier frames as the old parameters computed them; call roll.reset() after "
                "changing parameters and step the episode again.")

    def _check_no_adaptive_exit(self) -> None:
        for name, part in self._loops:
            tol = float(getattr(part, "exit_tol", 0.0) or 0.0)
            if tol > 0:
                raise RolloutError(
                    f"roll.step(): looped part {name!r} (scope {part.loop_scope}) has adaptive exit on "
                    f"(exit_tol={tol:g}): it stops each sample by the change of its whole canvas state, "
                    "which a one-frame step does not see, so the steps would not equal the full forward. "
                    "Roll out at a fixed depth: canvas_core.set_loops(model, n) (exit_tol=0)")

    def _slide(self, x_t: torch.Tensor) -> Any:
        """One full forward of the window (the last ``T - 1`` inputs and ``x_t``); its last frame."""
        keep = self._inputs[len(self._inputs) - (self.T - 1):] if self.T > 1 else []
        window = torch.cat(keep + [x_t], dim=1)
        try:
            with _measuring((self.T - 1, self.T)):  # the step's output is the window's last frame
                y = self.model(window)  # not stepping: the layers run on the whole canvas
        except Exception as exc:
            if not _wraps(exc):
                raise
            raise RolloutError(f"slide='recompute': the model failed on step {self.steps} (the window of the "
                               f"last {self.T} frames, {tuple(window.shape)}, whose frame {self.T - 1} is the new "
                               f"input): {type(exc).__name__}: {exc} (the original error is chained below)") from exc
        out = _frame_of(y, self.T - 1, self.V, self.T, "slide='recompute'")
        self._inputs = keep + [x_t.clone()]
        self.steps += 1
        return out

    def _run(self, x: torch.Tensor, t: int) -> Any:
        self._t = t
        for st in self._states:
            st.calls = 0
        n_before = [len(st.caches) for st in self._states]
        self._stepping = True
        was = [m.use_gradient_checkpointing for m in self._checkpointing]
        try:
            for m in self._checkpointing:
                m.use_gradient_checkpointing = False
            with _eager():
                y = self.model(x)
            for st in self._states:
                if t == 0:
                    del st.caches[st.calls:]  # buffers of a previous episode's extra calls
                elif st.calls != len(st.caches):
                    raise RolloutError(f"layer {st.name!r} ran {st.calls} time(s) in this step but "
                                       f"{len(st.caches)} time(s) per step before; a rollout needs the "
                                       "same calls every step (fix the loop count)")
        except BaseException as exc:
            for st, nb in zip(self._states, n_before):
                del st.caches[nb:]  # caches created by this failed first step
            if _wraps(exc):
                raise RolloutError(
                    f"the model failed on frame {t}, given as one frame {tuple(x.shape)}: "
                    f"{type(exc).__name__}: {exc} (the original error is chained below)."
                    f"{input_hint(x, self.model)} If it comes from "
                    "a module that expects the whole canvas: between its canvas layers a rollout runs the "
                    "model's other modules on one frame (B, V, D), so they must work position by position "
                    "(norms, MLPs, heads), and an embedding or a pooling over all N positions belongs "
                    "outside the model") from exc
            raise
        finally:
            self._stepping = False
            for m, w in zip(self._checkpointing, was):
                m.use_gradient_checkpointing = w
        return y

    def _updates_of(self, st: _LayerState):
        def _updates(x: torch.Tensor, active_regions: Any = None):
            """During ``roll.step``: ``x`` ``(B, V, D)``, the layer's input at the current frame ->
            (new values at the frame's updated positions or None, which positions those are).
            Otherwise the layer's own ``_updates`` on a whole canvas."""
            layer = st.layer
            if not self._stepping:
                if isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[1] == self.V != layer.plan.n:
                    raise RolloutError(f"layer {st.name!r} got one frame {tuple(x.shape)} outside roll.step: " + (
                        "a recomputation in backward (torch.utils.checkpoint around canvas layers) cannot "
                        "replay a rollout step; leave the canvas layers out of gradient checkpointing while "
                        "rolling out" if in_backward() else
                        "inside `with incremental(...) as roll` a frame goes through roll.step(x_t); a direct "
                        f"call of the model runs on a whole canvas (B, {layer.plan.n}, {layer.d_model})"))
                return type(layer)._updates(layer, x, active_regions)
            if active_regions is not None:
                raise RolloutError(f"layer {st.name!r} was called with active_regions; a rollout runs "
                                   "every connection (call the layer without active_regions)")
            if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[1] != self.V or x.shape[2] != layer.d_model:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ShapeError(f"layer {st.name!r} in a rollout expects one frame (B, {self.V}, "
                                 f"{layer.d_model}), got {got}")
            check_tensor(f"{type(layer).__name__} {st.name!r} in a rollout step", "x", x,
                         like=next(layer.parameters(), None))
            check_layer_layout(layer)
            i = st.calls
            st.calls += 1
            if st.index is None or not st.index.serves(x.device):
                st.index = _Index(x.device)
                for roll in st.caches:
                    roll.index = st.index
            if i >= len(st.caches) and self._t > 0:
                raise RolloutError(f"layer {st.name!r} ran more often in this step than in the first "
                                   "one; a rollout needs the same calls every step")
            if i >= len(st.caches) or not st.caches[i].fits(x):
                fresh = LayerRoll(layer, st.frames, st.index, x.shape[0], x.dtype, x.device)
                if i < len(st.caches):
                    st.caches[i] = fresh  # frame 0 with another batch, dtype or device
                else:
                    st.caches.append(fresh)
            roll = st.caches[i]
            observers = step_observers(layer, STEP_OBSERVERS)
            roll.keep_rows = any(o[2] for o in observers)
            out = roll.step(x, self._t)
            n = (self._t + 1) * self.V
            kv = None if roll.kv is None else (roll.kv[0][:, :, :n], roll.kv[1][:, :, :n])
            bad = roll.bad_keys(self._t) if any(o[3] for o in observers) else None
            for observer, with_kv, with_rows, with_bad in observers:
                observer(layer, roll.h[:, :n], self._t, *((kv,) if with_kv else ()),
                         **({"rows": roll.type_rows} if with_rows else {}), **({"bad": bad} if with_bad else {}))
            roll.type_rows = {}
            return out

        return _updates


def _frame_of(out: Any, t: int, V: int, T: int, what: str) -> Any:
    """Frame ``t`` of a whole-canvas output: every tensor of ``out`` (a tensor, or tuples, lists and
    dicts of them) sliced to positions ``t V .. (t + 1) V - 1`` of its dimension 1 (``T V`` long);
    None, numbers and strings as they are."""
    def cut(leaf: Any) -> Any:
        if leaf is None or isinstance(leaf, (bool, int, float, str)):
            return leaf
        if not isinstance(leaf, torch.Tensor):
            raise RolloutError(f"{what}: the model returned a {type(leaf).__name__}, which a frame cannot be cut "
                               "from; return a tensor (B, N, ...), or a tuple, list or dict of them")
        if leaf.dim() < 2 or leaf.shape[1] != T * V:
            raise RolloutError(f"{what}: the model returned a tensor of shape {tuple(leaf.shape)} on the whole "
                               f"canvas, without the N = {T * V} positions on dimension 1 that a frame is cut "
                               "from; return per-position outputs (B, N, ...) from the model")
        return leaf[:, t * V:(t + 1) * V]
    return tree_map(cut, out)


def incremental(model: nn.Module, layout: Any, *, slide: Optional[str] = None,
                width: Optional[int] = None, check: Union[bool, float] = False) -> Rollout:
    """Roll ``model`` out one canvas frame at a time: ``with incremental(model, layout) as roll``.

    Args:
        model: any module built from canvas layers (``CanvasAttention``, ``AttentionDispatcher``)
            and position-wise modules; its code is not changed.  Put it in ``eval()`` mode
            (dropout would make the frames differ from a full forward).
        layout: the ``CanvasLayout`` the model's layers were built on.
        slide: what a step past ``T`` frames does: None refuses it (``RolloutError``);
            ``"recompute"`` slides the window by one frame (see the module docstring).
        width: the width ``D`` of a step's input, an int >= 1 (default ``layout.d_model``).
        check: debugging aid: after every cached step, run the model on the whole canvas (the
            frames stepped so far, zeros after them) and raise ``RolloutError`` when the step's
            output differs from that frame of the full forward by more than ``check`` (True:
            ``1e-4``, or 8 eps of a float16 / bfloat16 output) times the output's largest finite
            magnitude (a NaN or inf the full forward has too, from a non-finite input, is no
            difference). It finds modules that mix positions
            outside the canvas layers, which a rollout computes wrongly without an error. Costs
            one full forward per step.

    Returns:
        a :class:`Rollout`, whose ``step(x_t)`` takes ``(B, V, D)`` and returns the model's output
        at that frame.  Its cache holds what each step computed with the parameters of its time:
        after changing parameters mid-episode (optimizer step, ``load_state_dict``, ``.to()``),
        call ``roll.reset()`` and step the episode again (this is not checked).

    Raises:
        TopologyError: a layer's topology lets a query read a later frame (names the connection).
        CanvasTypeError, ShapeError: the model holds no canvas layer, or its layers sit on another
            grid; or ``slide``, ``width`` or ``check`` is not one of the values described above.
    """
    return Rollout(model, layout, slide=slide, width=width, check=check)

