"""Model scope: the whole model as a step map whose output re-enters through its own input.

For a model whose output lives in its input space (a diffusion transformer predicting latents of
the input's shape, a world model predicting the next frame), iteration ``t >= 1`` feeds the state
back as the model's own input argument (``hidden_states`` for CogVideoX / Mochi, the first
argument of a generic model); every other argument (timestep, text) is passed unchanged::

    s = f(x)                                  # t = 0: the backbone as-is
    x_t = A(reenter(s))                       # reenter: user map, e.g. decode logits to states
    s = s + a_t (f(x_t) - s)                  # t >= 1, a_t as in loop_engine

``A`` is the identity, or with ``step_adapter="gated"`` ``A(z) = z + g * W z`` over the channel
axis with a zero-initialised scalar ``g`` (an adapter that starts exactly at the input-space
rollout, as the Game-of-Life feasibility run in the research notes suggests, and gated as
Ouroboros, arXiv 2604.02051, found looping of a frozen model needs). ``gate_init_bias = 0`` keeps
the model identical to the backbone at every loop count; ``gate_init_bias = 1`` starts at the
explicit rollout ``f(f(... f(x)))`` (the encode-iterate-decode view of arXiv 2510.07358 applied
to the whole step map).
"""

from __future__ import annotations

import functools
import inspect
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from canvas_core.errors import BackboneError, CanvasTypeError, ShapeError
from canvas_core.looping.exit_rows import per_sample_tensor, step_plan, step_rows
from canvas_core.looping.loop_engine import LoopCore, merge_extra_rows
from canvas_core.schema._validate import is_int

__all__ = ["ModelLoop", "STEP_ADAPTERS", "LOOP_ATTR", "install_model_loop", "remove_model_loop"]

STEP_ADAPTERS = (None, "gated")
#: the attribute of a model grafted with scope="model" that holds its ModelLoop
LOOP_ATTR = "canvas_loop"


def output_tensor(out: Any) -> torch.Tensor:
    """The tensor a model's forward returned: ``.sample`` (diffusers), the first entry of a tuple,
    or the tensor itself."""
    if isinstance(out, torch.Tensor):
        return out
    s = getattr(out, "sample", None)
    if isinstance(s, torch.Tensor):
        return s
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise BackboneError(
        f"scope='model': the model returned {type(out).__name__}, not a tensor, a tuple starting with "
        "one, or an object with .sample; its output cannot re-enter as its input. Use a span scope")


def _with_output(out: Any, s: torch.Tensor) -> Any:
    if isinstance(out, torch.Tensor):
        return s
    if isinstance(getattr(out, "sample", None), torch.Tensor):
        out.sample = s
        return out
    rest = tuple(out[1:])
    return [s, *rest] if isinstance(out, list) else (s,) + rest


class ModelLoop(LoopCore):
    """The loop of ``scope="model"`` (see the module docstring); installed as ``model.canvas_loop``.

    Args:
        max_loops: trained iteration count (more may be set with ``set_loops``).
        input_name: the forward argument the output re-enters as; ``channel_dim``: the channel
            axis of input and output; ``channels``: their width (for ``step_adapter``).
        reenter: optional ``callable(s) -> next input`` applied before the adapter.
        step_adapter: None or ``"gated"``.
        batched, unbatched: names of forward arguments the adaptive exit splits with the rows of
            the samples still running, and names it passes whole (see ``loop_engine.row_plan``).
            With adaptive exit the extra tuple entries of the output with one row per sample come
            from each sample's last iteration, any other from the last iteration of the whole batch.
    """

    loop_scope = "model"

    def __init__(self, max_loops: int, input_name: str, channel_dim: int, channels: Optional[int], *,
                 reenter: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 step_adapter: Optional[str] = None, update: str = "gated", damping: float = 0.5,
                 gate_init_bias: float = 0.0, unbatched: Sequence[str] = ("image_rotary_emb",),
                 batched: Sequence[str] = ()) -> None:
        if step_adapter not in STEP_ADAPTERS:
            raise BackboneError(f"ModelLoop: step_adapter={step_adapter!r} is not a step adapter; choose one "
                                f"of {list(STEP_ADAPTERS)}")
        if reenter is not None and not callable(reenter):
            raise BackboneError(f"ModelLoop: reenter={reenter!r} must be None or a callable mapping the "
                                "output to the next input")
        if step_adapter == "gated" and (not is_int(channels) or channels < 1):
            raise BackboneError(f"ModelLoop: step_adapter='gated' needs channels, the int width of the "
                                f"input's channel axis, got {channels!r}")
        super().__init__(max_loops, gate_init_bias, update, damping, False)
        self.input_name = input_name
        self.channel_dim = int(channel_dim)
        self.reenter = reenter
        self.step_adapter = step_adapter
        self.unbatched = tuple(unbatched)
        self.batched = tuple(batched)
        object.__setattr__(self, "_holders", [])
        self._prev_forward: Any = None
        # set by install_model_loop, outside any trace: the forward each iteration calls (see
        # _inner_forward) and its parameter names
        self._inner: Optional[Tuple[Callable[..., Any], bool]] = None
        self._arg_names: Optional[List[str]] = None
        if step_adapter == "gated":
            self.adapter_gate = nn.Parameter(torch.zeros(1))
            self.adapter_proj = nn.Linear(int(channels), int(channels))

    def _extra_loop_parameters(self):
        out = []
        for k, h in enumerate(self._holders):
            fn = h._modules.get("canvas_fn") if isinstance(h, nn.Module) else None
            if fn is not None:
                out += [(f"block{k}.canvas_fn.{n}", p) for n, p in fn.named_parameters()]
        return out

    def adapt(self, z: torch.Tensor) -> torch.Tensor:
        """``A(z)``: the identity, or ``z + g * W z`` over the channel axis."""
        if self.step_adapter != "gated":
            return z
        zc = z.movedim(self.channel_dim, -1)
        w = self.adapter_proj
        d = w(zc.to(w.weight.dtype)).to(z.dtype).movedim(-1, self.channel_dim)
        return z + self.adapter_gate.to(z.dtype) * d

    def run(self, model: nn.Module, args: tuple, kwargs: dict) -> Any:
        fn, pass_model = self._inner or _inner_forward(model, self._prev_forward)
        args, kwargs = list(args), dict(kwargs)
        if self.input_name in kwargs:
            x, pos = kwargs[self.input_name], None
        elif args:
            x, pos = args[0], 0
        else:
            raise CanvasTypeError(
                f"{type(model).__name__} (scope='model') called without its input "
                f"{self.input_name!r}; pass it first or by keyword")
        if not isinstance(x, torch.Tensor):
            raise CanvasTypeError(f"scope='model': input {self.input_name!r} must be a tensor, got "
                                  f"{type(x).__name__}")
        B = x.shape[0]
        sig = self._arg_names if self._arg_names is not None else _forward_names(model, self._prev_forward)
        names = list(sig) + [""] * max(0, len(args) - len(sig))
        last: Dict[str, Any] = {}
        n = self.current_loops
        plan = step_plan(names, args, kwargs, B, self.batched, self.unbatched, "scope='model'",
                         self.exit_tol > 0 and B > 1, own_pos=pos, own_name=self.input_name)
        if self.reenter is not None and self.exit_tol > 0 and B > 1:
            _check_reenter_rows(self.reenter, B)

        def run(t: int, h: Tuple[torch.Tensor, ...], rows: Optional[torch.Tensor]):
            if t == 0:
                inp = x if rows is None else x.index_select(0, rows)
            else:
                z = h[0]
                if self.reenter is not None:
                    z = self.reenter(z)
                    if not isinstance(z, torch.Tensor) or z.shape != h[0].shape:
                        raise ShapeError(
                            f"scope='model': reenter returned {getattr(z, 'shape', type(z).__name__)}; "
                            f"it must map the output {tuple(h[0].shape)} to an input of the same shape")
                inp = self.adapt(z).to(x.dtype)
            a, k = (args, kwargs) if rows is None else step_rows(names, args, kwargs, plan, rows, B)
            a = [inp if i == pos else v for i, v in enumerate(a)]
            k = {nm: inp if nm == self.input_name else v for nm, v in k.items()}
            out = fn(model, *a, **k) if pass_model else fn(*a, **k)
            y = output_tensor(out)
            if n > 1 and y.shape != inp.shape:
                raise ShapeError(
                    f"scope='model': {type(model).__name__}'s output {tuple(y.shape)} differs from its "
                    f"input {self.input_name!r} {tuple(inp.shape)}, so it cannot re-enter as its next "
                    "input; use a span scope (i, j) or 'stack' for this model")
            last["out"] = out if rows is None else merge_extra_rows(last["out"], out, rows, B, 1)
            return (y,)

        s = self.iterate((x,), run)
        return _with_output(last["out"], s[0])


def _check_reenter_rows(reenter: Callable[..., Any], batch: int) -> None:
    """With adaptive exit, ``reenter`` maps the state of the running rows only: one holding a
    per-sample tensor (a closure cell, a bound method's object) would mix the samples' rows."""
    found = per_sample_tensor(reenter, batch, "reenter")
    if found is not None:
        place, shape = found
        raise BackboneError(
            f"scope='model': adaptive exit (exit_tol > 0) calls reenter on the state of the samples "
            f"still running only, and {place} (shape {shape}) has a first dim equal to the batch "
            f"size {batch}, one row per sample that reenter would apply to other rows. Compute it "
            "from reenter's input, pass it to the model as a batched argument, or use exit_tol=0")


def _inner_forward(model: nn.Module, prev: Any) -> Tuple[Callable[..., Any], bool]:
    """The forward the loop calls once per iteration, and whether ``model`` is passed to it first:
    ``prev`` (a forward set on the instance before grafting) or the class's own. Never a method
    bound to ``model``: ``model.forward`` is the looped forward, and dynamo, resuming after a
    graph break, rebuilds a bound method of ``model`` as ``model.forward`` (the loop then calls
    itself); nor ``__get__`` of a decorated forward, which dynamo cannot trace. The unbound
    function, called with ``model``, avoids both; it is looked up once, at install, since dynamo
    cannot trace ``type(model).forward`` for every class either (diffusers' models)."""
    if prev is None:
        return type(model).forward, True
    if isinstance(prev, types.MethodType) and prev.__self__ is model:
        return prev.__func__, True
    return prev, False


def _forward_names(model: nn.Module, prev: Any) -> List[str]:
    """Parameter names of the forward the loop calls (``self`` left out), to know which positional
    argument is which; empty when the signature cannot be read."""
    fn, pass_model = _inner_forward(model, prev)
    try:
        names = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []
    return names[1:] if pass_model else names


def _looped_forward(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
    return getattr(model, LOOP_ATTR).run(model, args, kwargs)


def looped_forward_of(model: nn.Module) -> Callable[..., Any]:
    """The ``forward`` installed on a ``scope="model"`` model: ``functools.partial`` of the
    module-level :func:`_looped_forward` with ``model``. Not ``types.MethodType``: pickle rebuilds a
    bound method as ``getattr(model, "_looped_forward")``, which the model does not have, so
    ``torch.save(model)`` wrote a file ``torch.load`` could not read; a partial pickles as its
    function (by name) and its arguments (the model, already in the pickle's memo)."""
    return functools.partial(_looped_forward, model)


#: the instance attribute ``nn.DataParallel`` (``replicate``) calls to copy a module per device
_REPLICATE = "_replicate_for_data_parallel"


def _replicate_looped(model: nn.Module) -> nn.Module:
    """``model._replicate_for_data_parallel()`` of a ``scope="model"`` model: the class's own copy,
    with its ``forward`` routed through the copy (the copied instance ``forward`` is bound to
    ``model``, so every ``DataParallel`` replica would otherwise run the original's weights on the
    original's device)."""
    replica = getattr(type(model), _REPLICATE)(model)
    object.__setattr__(replica, "forward", looped_forward_of(replica))
    return replica


def install_model_loop(model: nn.Module, loop: ModelLoop, holders: List[nn.Module]) -> None:
    """Attach ``loop`` as ``model.canvas_loop`` and route ``model.forward`` (and the forward of
    each ``DataParallel`` replica of ``model``) through it."""
    loop._prev_forward = model.__dict__.get("forward")
    loop._inner = _inner_forward(model, loop._prev_forward)
    loop._arg_names = _forward_names(model, loop._prev_forward)
    object.__setattr__(loop, "_holders", list(holders))
    model.add_module(LOOP_ATTR, loop)
    object.__setattr__(model, "forward", looped_forward_of(model))
    object.__setattr__(model, _REPLICATE, functools.partial(_replicate_looped, model))


def remove_model_loop(model: nn.Module) -> Optional[ModelLoop]:
    """Undo :func:`install_model_loop` (for ungrafting); returns the removed loop."""
    loop = model._modules.pop(LOOP_ATTR, None)
    if loop is None:
        return None
    model.__dict__.pop(_REPLICATE, None)
    prev = loop._prev_forward
    if prev is None:
        model.__dict__.pop("forward", None)
    else:
        object.__setattr__(model, "forward", prev)
    return loop
