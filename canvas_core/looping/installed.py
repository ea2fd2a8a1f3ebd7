"""What installing a topology in a backbone builds: the shared plan and kernels, one view per block.

* :class:`InstalledTopology`: what ``BackboneAdapter.install_topology`` builds once per install:
  the plan of the topology restricted to the backbone's tokens (O(S + rectangles), see
  :func:`canvas_core.runtime.plan_runner.compact_plan`), its kernels, and the report.
* :class:`BlockTopology`: one block's view of it (the shared kernels plus that block's gated
  modules of the non-softmax types).
* :class:`GatedTypeModule`: a non-softmax type's module in a block, behind one gate (0 at init).
* :func:`beta_scaled`: how an inverse temperature ``beta`` reaches an attention kernel (also
  used by :func:`~canvas_core.looping.processor.canvas_sdpa`).
* :func:`guard_input_shapes`: the per-call check, on a backbone's input module, that a call has
  the shapes (text length, patch grid) the installed token layout was built for.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from canvas_core.errors import BackboneError, ShapeError

__all__ = ["InstalledTopology", "BlockTopology", "GatedTypeModule", "guard_input_shapes", "SHAPE_KEYS"]

#: the entries of ``TokenLayout.info`` that fix where each token sits, checked on every call
#: (two shapes with the same token count may place the tokens differently: e.g. CogVideoX with
#: 2 frames of 4x4 patches and 6 text tokens, or 1 frame and 22 text tokens, both 38 tokens)
SHAPE_KEYS: Dict[str, str] = {
    "text_len": "text tokens",
    "frames": "latent frames (patched)",
    "height": "patch rows",
    "width": "patch columns",
    "grid": "patch grid (rows, columns)",
    "prefix_tokens": "prefix tokens",
}


def _shape_value(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return tuple(int(x) for x in v)
    return int(v)


class GatedTypeModule(nn.Module):
    """A non-softmax type's module inside a backbone block, behind ONE gate that is 0 at
    initialisation (so the block's output is the backbone's at initialisation, at any loop count).

    The gate is a scalar parameter ``gate`` starting at 0, unless the type gates itself
    (``self_gated = True``, e.g. ``gated``: ``tanh(alpha) = 0`` at init): then its own gate is the
    only one and ``gate`` is None.  Two stacked zero gates would give every parameter of the
    branch an exactly zero gradient, so it could never learn."""

    def __init__(self, fn: str, module: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.module = module
        if getattr(module, "self_gated", False) is True:
            self.gate = None
        else:
            self.gate = nn.Parameter(torch.zeros(()))

    def extra_repr(self) -> str:
        own = ", gate: the type's own" if self.gate is None else ""
        return f"fn={self.fn!r}{own}"


def _key(fn: str) -> str:
    return fn.replace(".", "__")


class InstalledTopology:
    """A topology installed in a backbone (shared by all its blocks; no parameters).

    Attributes:
        tokens: the ``TokenLayout``; ``seq_len``: its number of tokens.
        plan: the compiler's plan on the canvas (canonical positions, with ``resolutions``).
        token_plan: the plan over the tokens in the backbone's order (:func:`compact_plan`).
        runner: the :class:`~canvas_core.runtime.plan_runner.PlanRunner` of ``token_plan``.
        softmax_types / module_types: fn types run as the backbone's attention / by their module.
        backbone: the adapter name; ``install_seconds``: how long the install took.
    """

    def __init__(self, *, plan: Any, tokens: Any, softmax_types: Sequence[str], kernels: Mapping[str, Any],
                 n_heads: int, head_dim: int, backbone: str = "",
                 kernel_options: Optional[Mapping[str, Any]] = None, device: Any = None) -> None:
        from canvas_core.runtime.plan_runner import PlanRunner, compact_plan

        from canvas_core.runtime.canvas_attention import plan_stamps

        self.plan = plan
        # what the plan was lowered from (a change since its lowering is refused here), checked
        # before every use (check_unchanged) and by checkpoints
        self._layout_stamp, self._topology_stamp = plan_stamps(plan, "InstalledTopology")
        self.tokens = tokens
        self.seq_len = int(tokens.seq_len)
        self.backbone = backbone
        self.softmax_types = tuple(softmax_types)
        self.kernels = dict(kernels)
        self.n_heads, self.head_dim = int(n_heads), int(head_dim)
        self.kernel_options = dict(kernel_options or {})
        self.token_plan = compact_plan(plan, tokens.token_index)
        self.runner = PlanRunner(self.token_plan, self.softmax_types, self.kernels, n_heads=self.n_heads,
                                 head_dim=self.head_dim, normalize="softmax",
                                 kernel_options=self.kernel_options, device=device)
        self.module_types = tuple(self.runner.other_fns)
        self._cache: Dict[Tuple[str, Optional[bytes]], Any] = {}
        self.install_seconds = 0.0
        #: fn -> how its module runs, for the report (set at install: gate, call, learnability)
        self.module_roles: Dict[str, str] = {}
        info = getattr(tokens, "info", None) or {}
        #: the shapes the token layout was built for (Python ints / tuples; see ``SHAPE_KEYS``)
        self.input_shapes: Dict[str, Any] = {}
        for k in SHAPE_KEYS:
            try:  # a hand-made TokenLayout may record other things under these names: not checked
                self.input_shapes[k] = _shape_value(info[k])
            except (KeyError, TypeError, ValueError):
                pass

    # --- execution ---------------------------------------------------------------------------
    def check_unchanged(self) -> None:
        """Refuse (``SchemaError``) to run once the topology (or the layout) the plan was lowered
        from has changed since the install: the plan would run the old connections."""
        from canvas_core.schema.staleness import (check_topology_unchanged, check_topology_unchanged_traced,
                                                  check_unchanged, check_unchanged_traced)

        owner = f"canvas topology installed in backbone {self.backbone!r}"
        fix = "install the changed topology again (adapter.install_topology(model, topology, tokens))"
        traced = torch.compiler.is_compiling()
        (check_topology_unchanged_traced if traced else check_topology_unchanged)(
            self.plan.topology, self.__dict__.get("_topology_stamp"), owner, fix)
        (check_unchanged_traced if traced else check_unchanged)(
            self.plan.layout, self.__dict__.get("_layout_stamp"), owner)

    def check_len(self, seq_len: int) -> None:
        if seq_len != self.seq_len:
            raise ShapeError(
                f"the canvas topology was installed for {self.seq_len} attention tokens but this call "
                f"has {seq_len}; rebuild adapter.token_layout(model, inputs) for these input shapes and "
                "install the topology again"
            )

    def check_shapes(self, given: Optional[Mapping[str, Any]]) -> None:
        """Refuse (``ShapeError``) a call whose shapes (``given``: names of ``SHAPE_KEYS`` -> the
        call's values, Python ints from tensor shapes) differ from those the token layout was
        built for.  Only the names known on both sides are compared: a call with the same token
        count but e.g. another text length or patch grid would otherwise run the plan on tokens
        it does not describe."""
        if not given:
            return
        # ints from shapes (under torch.compile a guard on the shape, no graph break; a refused
        # call raises, which ``fullgraph=True`` reports as dynamo's own error)
        diff = [(k, v, given[k]) for k, v in self.input_shapes.items()
                if k in given and _differs(v, given[k])]
        if diff:
            what = "; ".join(f"{SHAPE_KEYS[k]}: installed {_fmt(v)}, given {_fmt(g)}" for k, v, g in diff)
            raise ShapeError(
                f"the canvas topology in backbone {self.backbone!r} was installed for other input shapes "
                f"than this call's ({what}); its token layout places the tokens of those shapes only. "
                "Rebuild adapter.token_layout(model, inputs) for these input shapes and install the "
                "topology again (adapter.install_topology(model, topology, tokens))"
            )

    def runner_for(self, device: Any, rows: Optional[torch.Tensor] = None):
        """The runner on ``device``; with ``rows`` (token numbers kept, e.g. Mochi's valid text),
        the runner of the plan restricted to those tokens (built once per distinct set)."""
        if rows is not None:
            return self._runner_for_rows(device, rows)
        # no cache lookup here: the first compiled call, tracing a miss, guarded on the key's
        # absence and compiled the model again on the next call (the runner moves in place anyway)
        if self.runner.updated.device != torch.device(device):
            self.runner.to(device)
        return self.runner

    @torch.compiler.disable
    def _runner_for_rows(self, device: Any, rows: torch.Tensor):
        """:meth:`runner_for` with ``rows``, always run eagerly, also inside ``torch.compile``.

        Finding or building the restricted plan is host-side NumPy work (the cache key from the
        rows' values, ``compact_plan``, a new ``PlanRunner``).  Left to dynamo, it was traced
        and its NumPy calls rewritten as torch ops (``torch._numpy``), which run a NumPy
        ``cumsum`` over a bool array as a bool ``Tensor.cumsum``: CPU has no such kernel
        ("cumsum_out_cpu" not implemented for 'Bool'), so a compiled Mochi whose first call built
        a runner failed.  Here dynamo breaks the graph and receives the finished runner."""
        key = (str(device), rows.detach().cpu().numpy().astype(np.int64).tobytes())
        r = self._cache.get(key)
        if r is None:
            from canvas_core.runtime.plan_runner import PlanRunner, compact_plan

            sub = compact_plan(self.token_plan, rows.detach().cpu().numpy())
            base = PlanRunner(sub, self.softmax_types, self.kernels, n_heads=self.n_heads,
                              head_dim=self.head_dim, normalize="softmax", kernel_options=self.kernel_options,
                              device=device)
            r = self._remember(key, base.to(device))
        return r

    def _remember(self, key: Tuple[str, Optional[bytes]], runner: Any) -> Any:
        """Cache ``runner`` under ``key`` (the cache is emptied once it holds 32) and return it."""
        if len(self._cache) >= 32:
            self._cache.clear()
        self._cache[key] = runner
        return runner

    # --- the canvas attention it runs in ----------------------------------------------------
    @property
    def attention_owners(self) -> Tuple[Tuple[int, Any, str, Any], ...]:
        """``(block, owner, attr, attention)`` per block, set at install: ``getattr(owner, attr)``
        must stay ``attention`` (the canvas processor / module holding this topology) or a module
        wrapping it, else the backbone runs an attention that ignores the topology (see
        :meth:`check_attention`)."""
        return self._places().owners

    @attention_owners.setter
    def attention_owners(self, owners: Tuple[Tuple[int, Any, str, Any], ...]) -> None:
        self.__dict__["_attention_places"] = AttentionPlaces(tuple(owners))

    def _places(self) -> "AttentionPlaces":
        places = self.__dict__.get("_attention_places")
        return places if places is not None else AttentionPlaces(())

    def replaced_attention(self) -> List[Tuple[int, str]]:
        """``(block, type name of what runs there now)`` for each block whose canvas attention
        was replaced since the install (e.g. by diffusers' ``set_attn_processor``)."""
        return [(b, type(now).__name__) for b, now in self._places().replaced()]

    def replaced_message(self, what: str, fix: str) -> str:
        """The refusal naming the blocks whose canvas attention was replaced (``what``: what is
        refused; ``fix``: what to do)."""
        gone = self.replaced_attention()
        blocks = ", ".join(f"block {b} ({name})" for b, name in gone)
        return (f"{what}: the attention of the canvas topology installed in backbone {self.backbone!r} was "
                f"replaced after the install in {blocks} (e.g. by model.set_attn_processor(...) or "
                "model.fuse_qkv_projections()); those blocks would run without the topology, its gated "
                f"modules and sharpening. {fix}")

    def check_attention(self) -> None:
        """Refuse (``BackboneError``) a call once a block's canvas attention was replaced."""
        if not self._places().intact():
            raise BackboneError(self.replaced_message(
                "this call of the model is refused",
                "To run the topology, put the canvas processors back (model.unfuse_qkv_projections() "
                "after fusing); to keep the new processors, call adapter.remove_topology(model) first "
                "(then adapter.prepare(model) and install_topology to put a topology on them again). "
                "Change processors before installing a topology, not after"))

    # --- report ------------------------------------------------------------------------------
    #: what the adapter adds to :meth:`report` about this backbone (one line each)
    notes: Tuple[str, ...] = ()

    def describe_kernels(self) -> Dict[str, str]:
        return self.runner.describe_kernels()

    def report(self) -> str:
        """Which kernel runs each fn group in the backbone, then the compiler's resolution table."""
        from canvas_core.compiler.report import format_resolutions, format_table

        rows = []
        kern = self.describe_kernels()
        for fn, g in self.token_plan.groups.items():
            role = "backbone attention" if fn in self.softmax_types else self.module_roles.get(
                fn, "own module, gated (gate starts at 0)")
            rows.append([fn, len(g.connections), g.n_rects, role, kern.get(fn, "- (links no token)")])
        head = (f"canvas topology in backbone {self.backbone!r}: {self.seq_len} tokens, "
                f"installed in {self.install_seconds * 1e3:.1f} ms")
        parts = [head, format_table(["fn", "connections", "rectangles", "runs as", "kernel"], rows)]
        parts += [f"note: {n}" for n in self.notes]
        res = getattr(self.plan, "resolutions", None)
        if res:
            parts.append(format_resolutions(res))
        return "\n".join(parts)

    def __repr__(self) -> str:
        return (f"InstalledTopology(backbone={self.backbone!r}, tokens={self.seq_len}, "
                f"kernels={self.describe_kernels()})")


def _differs(installed: Any, given: Any) -> bool:
    if isinstance(installed, tuple):
        given = tuple(given)
        return len(given) != len(installed) or any(g != i for g, i in zip(given, installed))
    return given != installed


def _fmt(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "x".join(str(x) for x in v)
    return str(v)


#: attribute of a backbone's input module holding ``(installed, read)`` for :func:`_check_input_shapes`
SHAPE_CHECK_ATTR = "_canvas_shape_check"


def _check_input_shapes(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
    """Forward pre-hook of a backbone's input module: the call's shapes against the installed
    token layout's.  Reads Python ints from shapes only (no device sync, no graph break)."""
    spec = module.__dict__.get(SHAPE_CHECK_ATTR)
    if spec is not None:
        installed, read = spec
        check = getattr(installed, "check_attention", None)  # (None: no topology)
        if check is not None:
            check()
        installed.check_shapes(read(module, args, kwargs))
    return None


def guard_input_shapes(module: Optional[nn.Module], installed: Optional[InstalledTopology],
                       read: Optional[Callable[[nn.Module, Tuple[Any, ...], Dict[str, Any]],
                                               Mapping[str, Any]]] = None) -> None:
    """Check every call of ``module`` (a backbone's input module, e.g. its patch embedding,
    which sees the input's shape before it is flattened into tokens) against ``installed``:
    ``read(module, args, kwargs)`` -> the call's shapes (names of ``SHAPE_KEYS``), compared by
    :meth:`InstalledTopology.check_shapes`.  ``installed=None`` removes the check.

    ``read`` must be a module-level function (the model stays picklable / deep-copyable; the
    check's state lives in ``module.__dict__``, so a copy of the model checks its own
    installation)."""
    if module is None:
        return
    if installed is None or read is None:
        module.__dict__.pop(SHAPE_CHECK_ATTR, None)
        for k, h in list(module._forward_pre_hooks.items()):
            if h is _check_input_shapes:
                del module._forward_pre_hooks[k]
                module._forward_pre_hooks_with_kwargs.pop(k, None)
                getattr(module, "_forward_pre_hooks_always_called", {}).pop(k, None)
        return
    module.__dict__[SHAPE_CHECK_ATTR] = (installed, read)
    if not any(h is _check_input_shapes for h in module._forward_pre_hooks.values()):
        module.register_forward_pre_hook(_check_input_shapes, with_kwargs=True)


def beta_scaled(q: torch.Tensor, beta: Any) -> Tuple[torch.Tensor, float]:
    """``(q', scale)`` with ``scale * q' k^T = beta * q k^T / sqrt(d)`` (``q, k`` ``(..., d)``).

    Eager: ``q`` as is and ``scale = beta / sqrt(d)``. Under ``torch.compile`` ``beta`` goes into
    ``q`` instead: once a sharpening schedule has changed, dynamo traces ``beta`` as a symbolic
    float, and as an attention kernel's ``scale`` it would be pinned to its value (a recompile for
    every new value); as a factor of ``q`` one graph serves them all (the result may differ from
    eager in the last bits for ``beta != 1``)."""
    if torch.compiler.is_compiling() and not (isinstance(beta, (int, float)) and beta == 1):
        return q * beta, 1.0 / math.sqrt(q.shape[-1])  # (no sharpening, beta 1: no extra product)
    return q, float(beta) / math.sqrt(q.shape[-1])


class BlockTopology:
    """One block's share of an :class:`InstalledTopology`: the shared kernels plus the block's
    gated modules (``modules``: ``nn.ModuleDict`` of :class:`GatedTypeModule`, or None)."""

    def __init__(self, shared: InstalledTopology, modules: Optional[nn.ModuleDict]) -> None:
        self.shared = shared
        self.modules = modules

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, beta: float = 1.0,
               dropout_p: float = 0.0, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``q, k, v`` ``(B, H, S, d)`` in the backbone's token order -> ``(B, S, H, d)``: the
        plan's softmax groups, mixed; zeros for a query with no key."""
        from canvas_core.runtime.plan_runner import mix_softmax_groups

        self.shared.check_unchanged()
        r = self.shared.runner_for(q.device, rows)
        q, scale = beta_scaled(q, beta)
        out, _ = mix_softmax_groups(r, q, k, v, scale=scale, dropout_p=dropout_p)
        if out is None:
            B, H, S, d = q.shape
            return q.new_zeros(B, S, H, d)
        return out.transpose(1, 2)

    def extra(self, x: torch.Tensor, rows: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The gated sum of the non-softmax types' module outputs ``(B, S, D)`` (None if none)."""
        if not self.modules:
            return None
        from canvas_core.runtime.plan_runner import run_module_groups

        self.shared.check_unchanged()
        r = self.shared.runner_for(x.device, rows)
        mods = {f: self.modules[_key(f)].module for f in r.other_names}
        gates = {f: self.modules[_key(f)].gate for f in r.other_names}
        return run_module_groups(r, x, mods, gates)


# --- where canvas attention sits (shared by the topology and the sharpening guard) -------------
def _inner_place(wrapper: Any, att: Any) -> Optional[Tuple[nn.Module, str]]:
    """``(parent, name)`` inside ``wrapper`` whose child ``name`` is ``att``: the wrapper still runs
    ``att`` (activation checkpointing's ``CheckpointWrapper``, torch.compile's ``OptimizedModule``,
    which holds it as ``_orig_mod``).  None: ``wrapper`` is no module holding ``att``."""
    if wrapper is att or not isinstance(wrapper, nn.Module):
        return None
    for parent in wrapper.modules():
        for name, child in parent._modules.items():
            if child is att:
                return parent, name
    return None


def with_holders(root: nn.Module, owners: Tuple[Tuple[int, Any, str, Any], ...]) -> Tuple[Tuple[int, Any, str, Any], ...]:
    """``owners`` and, for each processor place ``(pos, attention module, "processor", proc)``,
    the place of that attention module in its parent within ``root``: replacing the module
    (e.g. by a copy given another processor) drops the processor as surely as replacing it."""
    mods = {id(o): pos for pos, o, attr, _ in owners if attr == "processor" and isinstance(o, nn.Module)}
    extra = []
    for parent in root.modules() if mods else ():
        for name, child in parent._modules.items():
            if id(child) in mods:
                extra.append((mods.pop(id(child)), parent, name, child))
    return tuple(owners) + tuple(extra)


class AttentionPlaces:
    """Checks that each ``(pos, owner, attr, att)`` place still holds ``att``, or a module wrapping
    it.  Identity tests per call; a wrapper is looked into only when a test fails, then
    remembered (with where ``att`` sits inside it), so the next calls are identity tests again."""

    def __init__(self, owners: Tuple[Tuple[int, Any, str, Any], ...]) -> None:
        self.owners = owners
        self._now = [att for *_, att in owners]  # what each place holds, as last accepted
        self._inner: Dict[int, Tuple[nn.Module, str, Any]] = {}  # place -> att's spot in its wrapper

    def intact(self) -> bool:
        """True while every place holds its attention (maybe wrapped)."""
        for i, (_, owner, attr, _att) in enumerate(self.owners):
            if getattr(owner, attr, None) is not self._now[i]:
                return not self.replaced()
        for parent, name, att in self._inner.values():
            if parent._modules.get(name) is not att:
                return not self.replaced()
        return True

    def replaced(self) -> List[Tuple[int, Any]]:
        """``(pos, what sits there now)`` for each place that lost its attention; the places
        holding a wrapper of it are remembered as accepted."""
        gone = []
        for i, (pos, owner, attr, att) in enumerate(self.owners):
            now = getattr(owner, attr, None)
            inner = _inner_place(now, att)
            if now is not att and inner is None:
                gone.append((pos, now))
                continue
            self._now[i] = now
            self._inner.pop(i, None)
            if inner is not None:
                self._inner[i] = (*inner, att)
        return gone
